//! Building the backend in a process where nobody installed a rustls crypto provider (its
//! own test binary: no other test installs one here): it installs one itself.

use batchd_backends::ErrorKind;
use batchd_backends::openai::{OpenAiBackend, OpenAiConfig};

#[test]
fn the_backend_builds_without_a_provider_installed_by_the_caller() {
    let config = OpenAiConfig {
        base_url: "http://127.0.0.1:9/v1".into(),
        model: "m".into(),
        api_key: None,
        max_connections: 4,
    };
    assert!(OpenAiBackend::new(config).is_ok());
}

#[test]
fn invalid_base_url_is_an_error() {
    let config = OpenAiConfig {
        base_url: "not a url".into(),
        model: "m".into(),
        api_key: None,
        max_connections: 4,
    };
    let Err(e) = OpenAiBackend::new(config) else {
        panic!("expected an invalid URL error")
    };
    assert_eq!(e.kind, ErrorKind::Client);
}
