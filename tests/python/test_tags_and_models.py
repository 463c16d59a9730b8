"""The rest of a Bedrock batch workflow through boto3: tags on job ARNs (TagResource,
UntagResource, ListTagsForResource), the foundation-model listing (ListFoundationModels,
GetFoundationModel) over the configured and built-in models, the model id forms a
configuration may name, and the opt-in catch-all model."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from conftest import FAST_MODEL, SLOW_MODEL, create_job, records, unique, wait_for_status

UNKNOWN_ARN = "arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/abcdefabcdef"


def a_job(server, bucket: str, **extra) -> str:
    server.buckets.create(bucket)
    body, _ = records(2)
    in_uri = server.buckets.put(bucket, "in/x.jsonl", body)
    return create_job(server.bedrock, unique("tags"), in_uri, f"s3://{bucket}/out/", **extra)


def tags_of(client, arn: str) -> dict:
    return {t["key"]: t["value"] for t in client.list_tags_for_resource(resourceARN=arn)["tags"]}


def test_tags_round_trip_through_boto3(start_server, bucket_name):
    server = start_server(mode="local")
    bedrock = server.bedrock
    arn = a_job(server, bucket_name, tags=[{"key": "team", "value": "a"}, {"key": "cost center", "value": "42"}])
    assert tags_of(bedrock, arn) == {"team": "a", "cost center": "42"}, "the create request's tags"

    bedrock.tag_resource(resourceARN=arn, tags=[{"key": "env", "value": "dev"}, {"key": "team", "value": "b"}])
    assert tags_of(bedrock, arn) == {"team": "b", "cost center": "42", "env": "dev"}
    bedrock.untag_resource(resourceARN=arn, tagKeys=["team", "not-there"])
    assert tags_of(bedrock, arn) == {"cost center": "42", "env": "dev"}
    wait_for_status(bedrock, arn, {"Completed"})
    assert tags_of(bedrock, arn) == {"cost center": "42", "env": "dev"}, "an ended job keeps its tags"

    # Bedrock's limits and errors.
    with pytest.raises(bedrock.exceptions.TooManyTagsException):
        bedrock.tag_resource(resourceARN=arn, tags=[{"key": f"k{i}", "value": "v"} for i in range(49)])
    bedrock.tag_resource(resourceARN=arn, tags=[{"key": f"k{i}", "value": "v"} for i in range(48)])
    assert len(tags_of(bedrock, arn)) == 50
    for bad in ([{"key": "a" * 129, "value": "v"}], [{"key": "bad#char", "value": "v"}], [{"key": "aws:x", "value": "v"}]):
        with pytest.raises(bedrock.exceptions.ValidationException):
            server.bedrock_raw.tag_resource(resourceARN=arn, tags=bad)
    for call in (
        lambda a: bedrock.list_tags_for_resource(resourceARN=a),
        lambda a: bedrock.tag_resource(resourceARN=a, tags=[{"key": "k", "value": "v"}]),
        lambda a: bedrock.untag_resource(resourceARN=a, tagKeys=["k"]),
    ):
        with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
            call(UNKNOWN_ARN)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.list_tags_for_resource(resourceARN="arn:aws:bedrock:us-east-1:000000000000:custom-model/x")


def test_tags_are_per_account(start_server, bucket_name):
    keys = {"A": ("AKIDTAGSA", "secret-a", "111111111111"), "B": ("AKIDTAGSB", "secret-b", "222222222222")}
    extra = "".join(
        f'[[auth.keys]]\naccess_key_id = "{k}"\nsecret_access_key = "{s}"\naccount_id = "{a}"\n\n'
        for k, s, a in keys.values()
    )
    server = start_server(mode="local", extra_toml=extra)
    a = server.client(key=keys["A"][:2])
    b = server.client(key=keys["B"][:2])
    server.buckets.create(bucket_name)
    in_uri = server.buckets.put(bucket_name, "in/x.jsonl", records(1)[0])
    arn = create_job(a, unique("mine"), in_uri, f"s3://{bucket_name}/out/", tags=[{"key": "k", "value": "v"}])
    assert tags_of(a, arn) == {"k": "v"}
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.list_tags_for_resource(resourceARN=arn)
    with pytest.raises(b.exceptions.ResourceNotFoundException):
        b.tag_resource(resourceARN=arn, tags=[{"key": "k", "value": "theirs"}])
    assert tags_of(a, arn) == {"k": "v"}


def test_foundation_models_list_and_get_through_boto3(start_server):
    server = start_server(mode="local")
    bedrock = server.bedrock
    summaries = bedrock.list_foundation_models()["modelSummaries"]
    by_id = {m["modelId"]: m for m in summaries}
    assert {FAST_MODEL, SLOW_MODEL, "batchd.smollm2-135m-instruct", "batchd.all-minilm-l6-v2"} <= set(by_id)
    fast = by_id[FAST_MODEL]
    assert fast["modelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{FAST_MODEL}"
    assert fast["providerName"] == "Anthropic"
    assert (fast["inputModalities"], fast["outputModalities"]) == (["TEXT"], ["TEXT"])
    assert fast["inferenceTypesSupported"] == ["ON_DEMAND"]
    assert fast["modelLifecycle"]["status"] == "ACTIVE"
    assert by_id["batchd.all-minilm-l6-v2"]["outputModalities"] == ["EMBEDDING"]

    anthropic = bedrock.list_foundation_models(byProvider="anthropic")["modelSummaries"]
    assert {m["modelId"] for m in anthropic} == {FAST_MODEL, SLOW_MODEL}
    embedding = bedrock.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]
    assert "batchd.all-minilm-l6-v2" in {m["modelId"] for m in embedding}
    assert FAST_MODEL not in {m["modelId"] for m in embedding}
    assert bedrock.list_foundation_models(byInferenceType="PROVISIONED")["modelSummaries"] == []

    for form in (
        FAST_MODEL,
        f"us.{FAST_MODEL}",
        f"apac.{FAST_MODEL}",
        f"arn:aws:bedrock:us-east-1::foundation-model/{FAST_MODEL}",
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.{FAST_MODEL}",
    ):
        details = bedrock.get_foundation_model(modelIdentifier=form)["modelDetails"]
        assert details["modelId"] == FAST_MODEL, form
    with pytest.raises(ClientError) as e:
        bedrock.get_foundation_model(modelIdentifier="acme.no-such-model-v1:0")
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "acme.no-such-model-v1:0" in e.value.response["Error"]["Message"]


APP_PROFILE = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"


@pytest.mark.parametrize(
    "model_id",
    [FAST_MODEL, f"eu.{FAST_MODEL}", f"apac.{FAST_MODEL}", APP_PROFILE],
    ids=["plain", "eu-profile", "apac-profile", "application-profile-arn"],
)
def test_model_id_forms_of_a_configured_application_profile_resolve(start_server, fake, bucket_name, model_id):
    extra = f'[[models]]\nid = "{APP_PROFILE}"\nbackend = "openai"\nbase_url = "{fake.base_url}"\nformat = "anthropic"\n'
    server = start_server(mode="local", extra_toml=extra)
    arn = a_job(server, bucket_name, model=model_id)
    job = wait_for_status(server.bedrock, arn, {"Completed"})
    assert job["modelId"] == model_id


def test_the_catch_all_model_runs_unknown_bedrock_ids_and_says_so(start_server, bucket_name):
    server = start_server(mode="local", overrides={"server": {"catch_all_model": FAST_MODEL}})
    arn = a_job(server, bucket_name, model="acme.any-model-v9:0")
    job = wait_for_status(server.bedrock, arn, {"Completed"})
    assert "catch-all" in job["message"] and FAST_MODEL in job["message"], job["message"]
    assert job["modelId"] == "acme.any-model-v9:0"


def test_without_the_catch_all_an_unknown_id_is_refused(start_server, bucket_name):
    server = start_server(mode="local")
    with pytest.raises(server.bedrock.exceptions.ValidationException) as e:
        a_job(server, bucket_name, model="acme.any-model-v9:0")
    assert "acme.any-model-v9:0" in str(e.value)
