//! The control sockets' request parsing and routing, over the bytes a local client sends.
//! No input may panic. An accepted request was a GET, PUT or POST (Cloud Hypervisor's calls:
//! GET or PUT, `vm.create` with its body). A refused one gets a 4xx or 501; `vmm`'s own paths
//! answer with a JSON object holding an `error` string, Cloud Hypervisor's with plain text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::api::{ApiCommand, ch, fuzz_request};

fuzz_target!(|data: &[u8]| {
    let line_end = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |i| i + 1);
    match fuzz_request(data) {
        Ok(command) => {
            // The request line was read as UTF-8 text; its first word is the method.
            let line = std::str::from_utf8(&data[..line_end]).expect("an accepted request line");
            let method = line.split_whitespace().next();
            match command {
                ApiCommand::Info => assert_eq!(method, Some("GET")),
                ApiCommand::Power(_) => {
                    assert!(matches!(method, Some("PUT" | "POST")), "{method:?}")
                }
                ApiCommand::Ch(ch::Call::Ping | ch::Call::Info) => {
                    assert_eq!(method, Some("GET"))
                }
                ApiCommand::Ch(ch::Call::Create(body)) => {
                    assert_eq!(method, Some("PUT"));
                    assert!(!body.is_empty());
                }
                ApiCommand::Ch(_) => assert_eq!(method, Some("PUT")),
            }
        }
        Err(answer) => {
            assert!(
                matches!(answer.status, 400 | 404 | 405 | 501),
                "status {}",
                answer.status
            );
            if answer.json {
                let json: serde_json::Value = serde_json::from_str(&answer.body)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", answer.body));
                assert!(json["error"].is_string(), "{}", answer.body);
            }
        }
    }
});
