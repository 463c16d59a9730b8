//! What the property tests ("fuzzing" on stable) share: any JSON value with keys mostly from
//! a dialect's own, so that the walks under test go deep, and the run's config.

use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, with object keys mostly from `keys` so that the walks go deep.
pub fn arb_json(
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> BoxedStrategy<Value> {
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
pub fn config() -> ProptestConfig {
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
