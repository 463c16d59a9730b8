//! Property tests ("fuzzing" on stable) of the Bedrock control plane's request parsing:
//! CreateModelInvocationJob bodies and ListModelInvocationJobs queries, however broken,
//! yield a request or a ValidationException, never a panic or a hang.
//! `PROPTEST_CASES=N` runs longer.
#![allow(clippy::unwrap_used)]

use batchd_api::bedrock::validate::{parse_create, parse_list_query};
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

/// Any JSON value, with object keys mostly from `keys` so that the walks go deep.
fn arb_json(keys: &'static [&'static str], words: &'static [&'static str]) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(words).prop_map(|w| json!(w)),
        ".{0,40}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => "[a-zA-Z_]{0,12}",
    ];
    leaf.prop_recursive(6, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Cases per property: a few seconds in CI; `PROPTEST_CASES=100000` for a long run by hand.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failures print their minimal case; no regression files inside the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

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
