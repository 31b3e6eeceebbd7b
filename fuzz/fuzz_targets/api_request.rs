//! The control socket's request parsing and routing, over the bytes a local client sends.
//! No input may panic; a refused request gets a 4xx whose body is a JSON object with an
//! `error` string; an accepted one was a GET, PUT or POST.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::{ApiCommand, fuzz_request};

fuzz_target!(|data: &[u8]| {
    match fuzz_request(data) {
        Ok(command) => {
            // The request line was read as UTF-8 text; its first word is the method.
            let line_end = data
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| i + 1);
            let line = std::str::from_utf8(&data[..line_end]).expect("an accepted request line");
            let method = line.split_whitespace().next();
            match command {
                ApiCommand::Info => assert_eq!(method, Some("GET")),
                ApiCommand::Power(_) => {
                    assert!(matches!(method, Some("PUT" | "POST")), "{method:?}")
                }
            }
        }
        Err((status, body)) => {
            assert!(matches!(status, 400 | 404 | 405), "status {status}");
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
            assert!(json["error"].is_string(), "{body}");
        }
    }
});
