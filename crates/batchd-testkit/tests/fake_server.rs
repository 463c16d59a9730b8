//! The fake server over real HTTP: rates, echo, truncation, stop, tool calls, embeddings, stats.
#![allow(clippy::unwrap_used)]

use batchd_testkit::{FakeConfig, FakeServer, FakeStats};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A fake with one client: building a reqwest client loads the TLS roots, too slow per call.
struct Fake {
    server: FakeServer,
    client: reqwest::Client,
}

impl Fake {
    async fn start(config: FakeConfig) -> Fake {
        let server = FakeServer::start(config).await.unwrap();
        Fake {
            server,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.server.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// GET `path` (from the server's root) as JSON.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        let url = format!("http://{}{path}", self.server.addr());
        let response = self.client.get(url).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn chat(&self, body: Value) -> (u16, Value) {
        self.post("/chat/completions", body).await
    }

    /// A fake whose reply is always `reply`.
    async fn replying(reply: &str) -> Fake {
        Fake::start(FakeConfig {
            reply: Some(reply.into()),
            ..Default::default()
        })
        .await
    }

    /// The answer to "hi" with the request member `key` set to `value`.
    async fn ask_with(&self, key: &str, value: Value) -> Value {
        let mut body = user("hi");
        body[key] = value;
        self.chat(body).await.1
    }

    async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn user(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn echoes_the_last_user_message_with_usage() {
    let server = Fake::start(FakeConfig::default()).await;
    let body = json!({"model": "my-model", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}, {"type": "text", "text": "question"}]},
    ]});
    let (status, out) = server.chat(body).await;
    assert_eq!(status, 200);
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "my-model");
    assert_eq!(out["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "echo: second question"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["choices"][0]["stop_reason"], Value::Null);
    // 2 + 2 + 2 + 2 words over all messages; the reply has 3.
    assert_eq!(out["usage"]["prompt_tokens"], 8);
    assert_eq!(out["usage"]["completion_tokens"], 3);
    assert_eq!(out["usage"]["total_tokens"], 11);
    server.shutdown().await;
}

#[tokio::test]
async fn fixed_reply_truncated_to_max_tokens_finishes_with_length() {
    let server = Fake::replying("one two three four five").await;
    let out = server.ask_with("max_tokens", json!(3)).await;
    assert_eq!(out["choices"][0]["message"]["content"], "one two three");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], 3);

    let out = server.ask_with("max_completion_tokens", json!(5)).await;
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "one two three four five"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    server.shutdown().await;
}

#[tokio::test]
async fn stop_string_cuts_the_reply() {
    let server = Fake::replying("alpha beta END gamma").await;
    let out = server.ask_with("stop", json!(["gamma", "END"])).await;
    assert_eq!(out["choices"][0]["message"]["content"], "alpha beta ");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["choices"][0]["stop_reason"], "END");

    let out = server.ask_with("stop", json!("beta")).await;
    assert_eq!(out["choices"][0]["message"]["content"], "alpha ");
    server.shutdown().await;
}

#[tokio::test]
async fn forced_tool_choice_answers_with_tool_calls() {
    let server = Fake::start(FakeConfig::default()).await;
    let tools = json!([
        {"type": "function", "function": {"name": "first", "parameters": {}}},
        {"type": "function", "function": {"name": "second", "parameters": {}}},
    ]);
    for (choice, expected) in [
        (json!("required"), "first"),
        (
            json!({"type": "function", "function": {"name": "second"}}),
            "second",
        ),
    ] {
        let mut body = user("call it");
        body["tools"] = tools.clone();
        body["tool_choice"] = choice;
        let (_, out) = server.chat(body).await;
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["type"], "function");
        assert_eq!(message["tool_calls"][0]["function"]["name"], expected);
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    }
    let mut body = user("maybe");
    body["tools"] = tools;
    body["tool_choice"] = json!("auto");
    let (_, out) = server.chat(body).await;
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    server.shutdown().await;
}

#[tokio::test]
async fn rates_of_one_fail_every_request() {
    for (status, kind) in [
        (400, "invalid_request_error"),
        (500, "server_error"),
        (503, "server_error"),
        (429, "rate_limit_error"),
    ] {
        let mut config = FakeConfig::default();
        let rate = match status {
            400 => &mut config.rate_400,
            500 => &mut config.rate_500,
            503 => &mut config.rate_503,
            _ => &mut config.rate_429,
        };
        *rate = 1.0;
        let server = Fake::start(config).await;
        for _ in 0..5 {
            let (got, out) = server.chat(user("hi")).await;
            assert_eq!(got, status);
            assert_eq!(out["error"]["type"], kind);
            assert!(out["error"]["message"].as_str().unwrap().contains("fake"));
        }
        let stats = server.server.stats();
        assert_eq!(stats.requests, 5);
        assert_eq!(stats.ok, 0);
        let by_status = match status {
            400 => stats.status_400,
            500 => stats.status_500,
            503 => stats.status_503,
            _ => stats.status_429,
        };
        assert_eq!(by_status, 5);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn partial_rate_fails_about_that_fraction() {
    let server = Fake::start(FakeConfig {
        rate_500: 0.5,
        ..Default::default()
    })
    .await;
    for _ in 0..200 {
        server.chat(user("hi")).await;
    }
    let stats = server.server.stats();
    assert_eq!(stats.ok + stats.status_500, 200);
    assert!((50..=150).contains(&stats.status_500), "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limited_answers_carry_retry_after() {
    let config = FakeConfig {
        rate_429: 1.0,
        retry_after_secs: Some(7),
        ..Default::default()
    };
    let server = Fake::start(config).await;
    let response = server
        .client
        .post(format!("{}/chat/completions", server.server.base_url()))
        .json(&user("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    server.shutdown().await;
}

#[tokio::test]
async fn fail_first_n_then_marker_then_success() {
    let config = FakeConfig {
        fail_first_n: 2,
        fail_when_prompt_contains: Some("POISON".into()),
        ..Default::default()
    };
    let server = Fake::start(config).await;
    assert_eq!(server.chat(user("hi")).await.0, 503);
    assert_eq!(server.chat(user("hi")).await.0, 503);
    assert_eq!(server.chat(user("hi")).await.0, 200);
    assert_eq!(server.chat(user("a POISON pill")).await.0, 400);
    let embed = json!({"model": "e", "input": ["ok", "POISON"]});
    assert_eq!(server.post("/embeddings", embed).await.0, 400);
    assert_eq!(server.chat(user("fine")).await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn embeddings_have_requested_dimensions_and_unit_norm() {
    let server = Fake::start(FakeConfig::default()).await;
    let (status, out) = server
        .post(
            "/embeddings",
            json!({"model": "e", "input": ["a b", "c"], "dimensions": 8}),
        )
        .await;
    assert_eq!(status, 200);
    let data = out["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        let vector: Vec<f64> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(vector.len(), 8);
        let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(out["usage"]["prompt_tokens"], 3);

    // A single string input, default dimensions, same text → same vector.
    let (_, single) = server
        .post("/embeddings", json!({"model": "e", "input": "c"}))
        .await;
    assert_eq!(
        single["data"][0]["embedding"].as_array().unwrap().len(),
        384
    );
    let (_, again) = server
        .post("/embeddings", json!({"model": "e", "input": "c"}))
        .await;
    assert_eq!(single["data"], again["data"]);
    server.shutdown().await;
}

#[tokio::test]
async fn stats_and_config_over_http() {
    let server = Fake::start(FakeConfig::default()).await;
    server.chat(user("hi")).await;
    server.chat(json!({"messages": "not an array"})).await;
    server.post("/embeddings", json!({"input": "x"})).await;
    let expected = FakeStats {
        requests: 3,
        ok: 2,
        status_400: 1,
        chat: 2,
        embeddings: 1,
        max_in_flight: 1,
        ..Default::default()
    };
    assert_eq!(server.server.stats(), expected);
    let client = server.client.clone();
    let root = format!("http://{}", server.server.addr());
    let over_http: FakeStats = server.get("/fake/stats").await;
    assert_eq!(over_http, expected);

    // Replace the config at run time, without a Content-Type header.
    let response = client
        .post(format!("{root}/fake/config"))
        .body(r#"{"rate_400": 1.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(server.server.config().rate_400, 1.0);
    assert_eq!(server.chat(user("hi")).await.0, 400);
    let response = client
        .post(format!("{root}/fake/config"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert_eq!(
        server.server.config().rate_400,
        1.0,
        "a bad body changes nothing"
    );

    let response = client
        .post(format!("{root}/fake/stats/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(server.server.stats().requests, 0);

    let models: Value = server.get("/v1/models").await;
    assert_eq!(models["data"][0]["object"], "model");
    server.shutdown().await;
}

#[tokio::test]
async fn max_in_flight_counts_concurrent_requests() {
    let server = Fake::start(FakeConfig::latency(200, 0)).await;
    let client = server.client.clone();
    let url = format!("{}/chat/completions", server.server.base_url());
    let calls = (0..8).map(|_| client.post(&url).json(&user("hi")).send());
    for response in spawn_all(calls).await {
        assert_eq!(response.unwrap().status().as_u16(), 200);
    }
    assert_eq!(server.server.stats().max_in_flight, 8);
    server.shutdown().await;
}

/// Runs the futures concurrently as tasks (no `futures` dependency needed).
async fn spawn_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
