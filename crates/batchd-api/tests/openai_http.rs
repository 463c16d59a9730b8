//! The OpenAI API's files and models over real HTTP: the router served on 127.0.0.1:0 with
//! the engine's `Files` (SQLite store, local storage), reqwest as the client, and multipart
//! bodies written out by hand so that each edge case is exactly what is sent.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use batchd_api::{ApiConfig, OpenAiApi, OpenAiConfig, router};
use batchd_engine::files::Files;
use batchd_engine::scheduler::{Scheduler, SchedulerConfig};
use batchd_engine::service::SchedulerService;
use batchd_engine::{Engine, EngineConfig};
use batchd_storage::StorageUri;
use serde_json::{Value, json};

const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MODELS: [&str; 2] = ["anthropic.claude-3-haiku-20240307-v1:0", "org/model"];

struct Server {
    base: String,
    http: reqwest::Client,
    files_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    batchd_testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (storage, store) = support::local_state(dir.path()).await;
    let files_dir = dir.path().join("files");
    let files = Files::new(
        storage.clone(),
        store.clone(),
        StorageUri::Local(files_dir.clone()),
    );
    // The Bedrock API's scheduler, never started: these tests only need it to exist.
    let scheduler = Scheduler::new(
        Engine::new(storage, EngineConfig::default()),
        store,
        HashMap::new(),
        SchedulerConfig::default(),
    );
    let app = router(
        Arc::new(SchedulerService(scheduler)),
        ApiConfig {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            models: Vec::new(),
        },
        Some(OpenAiApi {
            files: Arc::new(files),
            config: OpenAiConfig {
                models: MODELS.map(str::to_owned).to_vec(),
                max_file_bytes: MAX_FILE_BYTES,
            },
        }),
        // No keys: every caller is the anonymous account, as on loopback.
        Arc::new(batchd_api::auth::Authenticator::new(
            batchd_api::auth::AuthConfig {
                anonymous_account: "000000000000".into(),
                ..batchd_api::auth::AuthConfig::default()
            },
        )),
    );
    Server {
        base: support::serve(app).await,
        http: reqwest::Client::new(),
        files_dir,
        _dir: dir,
    }
}

#[derive(Clone, Copy)]
enum Part<'a> {
    Field(&'a str, &'a str),
    File(&'a str, &'a str, &'a [u8]),
    /// A part named `file` without a filename.
    Bare(&'a str, &'a [u8]),
}

const BOUNDARY: &str = "----batchd-test-boundary";

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Field(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                        .as_bytes(),
                );
            }
            Part::File(name, filename, data) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(data);
            }
            Part::Bare(name, data) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(data);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// The JSON of a 200 answer; any other status fails with the body.
    fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        self.json()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// An OpenAI error: its status, message and param.
    fn error(&self) -> (u16, String, Value) {
        let body = self.json();
        let error = &body["error"];
        assert_eq!(
            error.as_object().map(|o| {
                let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
                keys.sort();
                keys
            }),
            Some(vec!["code", "message", "param", "type"]),
            "{body}"
        );
        (
            self.status,
            error["message"].as_str().unwrap().to_owned(),
            error["param"].clone(),
        )
    }
}

impl Server {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    async fn upload(&self, parts: &[Part<'_>]) -> Answer {
        self.upload_body(multipart(parts)).await
    }

    /// A `POST /v1/files` of `body` as multipart with [`BOUNDARY`], whatever it holds.
    async fn upload_body(&self, body: Vec<u8>) -> Answer {
        let request = self
            .http
            .post(format!("{}/v1/files", self.base))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body);
        self.send(request).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// The objects in the files folder.
    fn stored(&self) -> usize {
        std::fs::read_dir(&self.files_dir).map_or(0, |d| d.count())
    }
}

fn batch_upload<'a>(name: &'a str, data: &'a [u8]) -> [Part<'a>; 2] {
    [
        Part::Field("purpose", "batch"),
        Part::File("file", name, data),
    ]
}

#[tokio::test]
async fn an_upload_streams_past_the_routers_body_limit_and_reads_back_byte_for_byte() {
    let server = start().await;
    // 3 MiB: more than the 1 MiB limit of the router's JSON requests, of every byte value.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let answer = server.upload(&batch_upload("big.jsonl", &data)).await;
    let file = answer.ok_json();
    let id = file["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("file-") && id.len() == 29, "{id}");
    let created = file["created_at"].as_i64().unwrap();
    assert_eq!(
        file,
        json!({
            "id": id, "object": "file", "bytes": data.len(), "created_at": created,
            "filename": "big.jsonl", "purpose": "batch", "status": "processed",
            "expires_at": created + 30 * 24 * 3600, "status_details": null,
        })
    );
    assert_eq!(server.get(&format!("/v1/files/{id}")).await.json(), file);
    let content = server.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status, 200);
    assert_eq!(
        content.headers["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    assert_eq!(
        content.headers["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"big.jsonl\""
    );
    assert!(content.body == data, "content differs");

    let deleted = server.delete(&format!("/v1/files/{id}")).await;
    assert_eq!(
        deleted.json(),
        json!({"id": id, "object": "file", "deleted": true})
    );
    assert_eq!(server.stored(), 0);
    for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        let (status, message, param) = server.get(&path).await.error();
        assert_eq!(
            (status, message.as_str(), param),
            (
                404,
                format!("No such File object: {id}").as_str(),
                json!("id")
            )
        );
    }
    assert_eq!(server.delete(&format!("/v1/files/{id}")).await.status, 404);
}

#[tokio::test]
async fn bad_uploads_answer_openais_errors_and_store_nothing() {
    let server = start().await;
    let line: &[u8] = b"{\"custom_id\":\"a\"}\n";
    let too_big = vec![b'x'; MAX_FILE_BYTES as usize + 1];
    let cases: Vec<(&str, Vec<Part>, &str, Value)> = vec![
        (
            "a .txt file",
            batch_upload("notes.txt", line).into(),
            "Invalid file format for Batch API. Must be .jsonl",
            json!("file"),
        ),
        (
            "one byte over the limit",
            batch_upload("big.jsonl", &too_big).into(),
            "File is too large.",
            json!("file"),
        ),
        (
            "no purpose",
            vec![Part::File("file", "a.jsonl", line)],
            "Missing required parameter: 'purpose' (it must come before 'file' in the multipart body).",
            json!("purpose"),
        ),
        (
            "the purpose after the file",
            vec![
                Part::File("file", "a.jsonl", line),
                Part::Field("purpose", "batch"),
            ],
            "Missing required parameter: 'purpose' (it must come before 'file' in the multipart body).",
            json!("purpose"),
        ),
        (
            "another purpose",
            vec![
                Part::Field("purpose", "fine-tune"),
                Part::File("file", "a.jsonl", line),
            ],
            "Invalid purpose 'fine-tune': batchd stores files of purpose 'batch'.",
            json!("purpose"),
        ),
        (
            "no file",
            vec![Part::Field("purpose", "batch")],
            "Missing required parameter: 'file'.",
            json!("file"),
        ),
        (
            "a file part without a filename",
            vec![Part::Field("purpose", "batch"), Part::Bare("file", line)],
            "'file' must be a file part (with a filename).",
            json!("file"),
        ),
        (
            "expires_after after the file",
            [
                &batch_upload("a.jsonl", line)[..],
                &[Part::Field("expires_after[seconds]", "3600")],
            ]
            .concat(),
            "'expires_after[seconds]' must come before 'file' in the multipart body.",
            json!("expires_after[seconds]"),
        ),
        (
            "two files",
            [
                &batch_upload("a.jsonl", line)[..],
                &[Part::File("file", "b.jsonl", line)],
            ]
            .concat(),
            "Only one 'file' per upload.",
            json!("file"),
        ),
        (
            "expires_after out of range",
            vec![
                Part::Field("purpose", "batch"),
                Part::Field("expires_after[anchor]", "created_at"),
                Part::Field("expires_after[seconds]", "60"),
                Part::File("file", "a.jsonl", line),
            ],
            "Invalid 'expires_after[seconds]': '60'; expected an integer from 3600 to 2592000.",
            json!("expires_after.seconds"),
        ),
    ];
    for (what, parts, message, param) in cases {
        let answer = server.upload(&parts).await;
        assert_eq!(answer.error(), (400, message.to_owned(), param), "{what}");
        assert_eq!(server.stored(), 0, "{what} left a file behind");
    }
    let listed = server.get("/v1/files").await.json();
    assert_eq!(listed["data"], json!([]));

    // Not multipart at all, and a body cut off mid-part.
    let json_body = server
        .send(
            server
                .http
                .post(format!("{}/v1/files", server.base))
                .json(&json!({"purpose": "batch"})),
        )
        .await;
    assert_eq!(json_body.error().0, 400);
    let mut cut = multipart(&batch_upload("a.jsonl", line));
    cut.truncate(cut.len() - 30);
    let cut = server.upload_body(cut).await;
    assert_eq!(cut.error().0, 400);
    assert_eq!(server.stored(), 0);
}

#[tokio::test]
async fn expires_after_sets_the_expiry_and_exactly_the_limit_is_accepted() {
    let server = start().await;
    let exact = vec![b'x'; MAX_FILE_BYTES as usize];
    let answer = server
        .upload(&[
            Part::Field("purpose", "batch"),
            Part::Field("expires_after[anchor]", "created_at"),
            Part::Field("expires_after[seconds]", "3600"),
            Part::Field("something_new", "ignored"),
            Part::File("file", "Exact.JSONL", &exact),
        ])
        .await;
    let file = answer.ok_json();
    assert_eq!(file["bytes"], MAX_FILE_BYTES);
    assert_eq!(
        file["expires_at"].as_i64(),
        Some(file["created_at"].as_i64().unwrap() + 3600)
    );
}

#[tokio::test]
async fn files_list_newest_first_by_default_in_pages_with_a_purpose_filter() {
    let server = start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = format!("f{i}.jsonl");
        let answer = server.upload(&batch_upload(&name, b"{}\n")).await;
        ids.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    let listed = server.get("/v1/files").await.json();
    let all: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let mut got = all.clone();
    got.sort();
    assert_eq!(got, sorted);
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["has_more"], false);
    assert_eq!(listed["first_id"], all[0]);
    assert_eq!(listed["last_id"], all[4]);

    // Pages of two follow the same order, each after the last id of the one before.
    for (order, expected) in [
        ("desc", all.clone()),
        ("asc", all.iter().rev().copied().collect()),
    ] {
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = server
                .get(&format!("/v1/files?limit=2&order={order}&after={after}"))
                .await
                .json();
            let data = page["data"].as_array().unwrap();
            seen.extend(data.iter().map(|f| f["id"].as_str().unwrap().to_owned()));
            if page["has_more"] == false {
                break;
            }
            assert_eq!(data.len(), 2);
            after = page["last_id"].as_str().unwrap().to_owned();
        }
        assert_eq!(seen, expected, "{order}");
    }
    let batch = server.get("/v1/files?purpose=batch&limit=10").await.json();
    assert_eq!(batch["data"].as_array().unwrap().len(), 5);
    let outputs = server.get("/v1/files?purpose=batch_output").await.json();
    assert_eq!(outputs["data"], json!([]));
    assert_eq!(outputs["first_id"], Value::Null);

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=ten", "limit"),
        ("order=newest", "order"),
    ] {
        let (status, _, got) = server.get(&format!("/v1/files?{query}")).await.error();
        assert_eq!((status, got), (400, json!(param)), "{query}");
    }
}

#[tokio::test]
async fn models_list_the_configured_ids_and_unknown_paths_answer_in_openais_shape() {
    let server = start().await;
    let models = server.get("/v1/models").await.json();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (model, id) in data.iter().zip(MODELS) {
        assert_eq!(model["id"], id);
        assert_eq!(model["object"], "model");
        assert_eq!(model["owned_by"], "batchd");
        assert!(model["created"].as_i64().unwrap() > 1_700_000_000);
    }
    let one = server.get("/v1/models/org/model").await.json();
    assert_eq!(one, data[1]);
    let missing = server.get("/v1/models/gpt-4o").await;
    assert_eq!(missing.error().0, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");

    assert_eq!(server.get("/v1/assistants").await.error().0, 404);
    let wrong_method = server
        .send(server.http.put(format!("{}/v1/files", server.base)))
        .await;
    assert_eq!(wrong_method.error().0, 405);
    // The Bedrock API is still there, with its own error shape.
    let bedrock = server.get("/model-invocation-job/aaaaaaaaaaaa").await;
    assert_eq!(bedrock.status, 404);
    assert_eq!(bedrock.json()["__type"], "ResourceNotFoundException");
}
