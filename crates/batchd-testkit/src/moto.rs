//! A moto S3-compatible server for tests: started on a free loopback port, killed on drop.
//! `scripts/test.sh` installs moto into `.venv` and sets `BATCHD_TEST_MOTO_SERVER`.
#![allow(clippy::expect_used)] // test scaffolding: moto failing to start fails the test, loudly

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Starts moto, or returns None (printing why) when `BATCHD_TEST_MOTO_SERVER` is unset
    /// outside CI. Under CI (`CI` set) a missing server is a test failure, never a skip.
    pub fn start() -> Option<Self> {
        let Some(bin) = std::env::var_os("BATCHD_TEST_MOTO_SERVER") else {
            crate::skip_unless_ci(
                "BATCHD_TEST_MOTO_SERVER is not set (scripts/test.sh sets it)",
                "run the tests through scripts/test.sh",
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.to_string_lossy()));
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start listening on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts unsigned requests). A connection moto resets or drops
    /// (seen under CI load, right after it starts) is tried again for up to 20 s; creating a
    /// bucket one already owns succeeds, so a retry after a lost answer is harmless.
    pub fn create_bucket(&self, bucket: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.put_bucket(bucket) {
                Ok(response) => {
                    assert!(
                        response.starts_with("HTTP/1.1 200"),
                        "create bucket {bucket}: {response}"
                    );
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create bucket {bucket} on moto: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("create bucket {bucket} on moto: {e}"),
            }
        }
    }

    /// One `PUT /bucket`, its whole answer as text.
    fn put_bucket(&self, bucket: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if response.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without an answer",
            ));
        }
        Ok(response)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
