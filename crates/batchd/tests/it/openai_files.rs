//! The OpenAI API's files on `batchd serve`: a 100 MB upload is streamed to where
//! `[openai] files_location` says (the server's peak RSS grows by a small fraction of the
//! file, not by the file), and its download is streamed back byte for byte. The SDK's view
//! of the same routes is `tests/python/test_openai_files.py`.

use batchd_testkit::harness::Config;
use serde_json::Value;

use crate::test_env;

const MB: u64 = 1_000_000;
const FILE_BYTES: usize = 100 * MB as usize;
/// How much the server's peak RSS may grow over its resident size before the upload: the
/// storage writer's few 5 MiB parts, the HTTP buffers and the pages the allocator keeps for
/// reuse (mimalloc keeps each thread's: 31 to 38 MB here, 33 MB for a 200 MB file, so
/// bounded), well below the 100 MB a server that held the file would need.
const MAX_GROWTH: u64 = 60 * MB;

/// A `kB` field of `/proc/PID/status` (`VmRSS`: resident now; `VmHWM`: the peak), in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_100_mb_upload_and_its_download_are_streamed_not_held_in_memory() {
    let env = test_env(&Config::new().set("openai", "files_location", "s3://files/uploads/"));
    let server = env.serve().await;
    let pid = server.child.id().unwrap();
    let http = reqwest::Client::new();
    // One request first, so what the first request builds is not counted as the upload's.
    assert_eq!(
        server.get_json("v1/files").await["data"],
        Value::Array(vec![])
    );
    let before = memory(pid, "VmRSS");

    // 100 MB of JSONL lines, each different so no layer could compress or dedupe them.
    let mut data = Vec::with_capacity(FILE_BYTES + 200);
    let mut n = 0u64;
    while data.len() < FILE_BYTES {
        let line = format!(
            "{{\"custom_id\":\"request-{n:09}\",\"pad\":\"{}\"}}\n",
            "x".repeat(60)
        );
        data.extend_from_slice(line.as_bytes());
        n += 1;
    }
    let boundary = "batchd-files-test";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = http
        .post(format!("{}/v1/files", server.url()))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["bytes"].as_u64(), Some(data.len() as u64), "{file}");
    let id = file["id"].as_str().unwrap();
    let upload_growth = memory(pid, "VmHWM").saturating_sub(before);

    // Stored where files_location says (s3:// without an endpoint: under the data dir).
    let stored = env.bucket("files").join("uploads").join(id);
    assert_eq!(
        std::fs::metadata(&stored).map(|m| m.len()).ok(),
        Some(data.len() as u64)
    );

    let content = http
        .get(format!("{}/v1/files/{id}/content", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    let got = content.bytes().await.unwrap();
    assert!(got == data, "the download differs from the upload");
    let growth = memory(pid, "VmHWM").saturating_sub(before);
    eprintln!(
        "RSS before {} MB; peak growth {} MB after the upload, {} MB after the download",
        before / MB,
        upload_growth / MB,
        growth / MB
    );
    assert!(
        growth < MAX_GROWTH,
        "the server's peak RSS grew by {growth} bytes over {before} for a {FILE_BYTES}-byte file"
    );
}
