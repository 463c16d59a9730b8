//! Property tests ("fuzzing" on stable) of the Bedrock control plane's request parsing:
//! CreateModelInvocationJob bodies and ListModelInvocationJobs queries, however broken,
//! yield a request or a ValidationException, never a panic or a hang.
//! `PROPTEST_CASES=N` runs longer.
#![allow(clippy::unwrap_used)]

use batchd_api::bedrock::validate::{parse_create, parse_list_query};
use batchd_testkit::fuzz::{arb_json, config};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEYS: &[&str] = &[
    "jobName",
    "roleArn",
    "modelId",
    "clientRequestToken",
    "inputDataConfig",
    "s3InputDataConfig",
    "s3Uri",
    "s3InputFormat",
    "s3BucketOwner",
    "outputDataConfig",
    "s3OutputDataConfig",
    "s3EncryptionKeyId",
    "timeoutDurationInHours",
    "tags",
    "key",
    "value",
    "vpcConfig",
    "subnetIds",
    "securityGroupIds",
    "modelInvocationType",
];

const WORDS: &[&str] = &[
    "job-1",
    "arn:aws:iam::123456789012:role/r",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "s3://bucket/in/",
    "s3://bucket/out/",
    "s3://",
    "JSONL",
    "Converse",
    "InvokeModel",
    "123456789012",
    "subnet-0123",
    "sg-0123",
    "",
    "😀",
    "\u{0}",
];

const QUERY_KEYS: &[&str] = &[
    "maxResults",
    "nextToken",
    "statusEquals",
    "nameContains",
    "submitTimeAfter",
    "submitTimeBefore",
    "sortBy",
    "sortOrder",
];

/// A create body with the right skeleton and random values or subtrees in it.
fn arb_create() -> impl Strategy<Value = Value> {
    let any_json = || arb_json(KEYS, WORDS);
    (
        any_json(),
        any_json(),
        any_json(),
        any_json(),
        any_json(),
        any_json(),
    )
        .prop_map(|(name, input, output, hours, tags, extra)| {
            json!({
                "jobName": name,
                "roleArn": "arn:aws:iam::123456789012:role/r",
                "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                "inputDataConfig": {"s3InputDataConfig": {"s3Uri": input}},
                "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": output}},
                "timeoutDurationInHours": hours,
                "tags": tags,
                "vpcConfig": extra,
            })
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn create_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_create(&body);
    }

    #[test]
    fn create_json_never_panics(body in arb_json(KEYS, WORDS)) {
        let _ = parse_create(body.to_string().as_bytes());
    }

    #[test]
    fn create_like_bodies_never_panic(body in arb_create(), cut in 0usize..600) {
        let text = body.to_string();
        let _ = parse_create(text.as_bytes());
        let _ = parse_create(&text.as_bytes()[..cut.min(text.len())]);
    }

    #[test]
    fn list_queries_never_panic(
        pairs in prop::collection::vec(
            (
                prop_oneof![prop::sample::select(QUERY_KEYS).prop_map(str::to_owned), ".{0,10}"],
                prop_oneof![
                    prop::sample::select(WORDS).prop_map(str::to_owned),
                    "[0-9]{0,25}",
                    ".{0,60}",
                ],
            ),
            0..8,
        )
    ) {
        let _ = parse_list_query(&pairs);
    }
}
