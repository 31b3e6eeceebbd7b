//! Shell steps for the network tests: namespaces, links, peers' servers.

use std::process::Command;

/// Runs `script` with `sh -e`; its stdout and stderr. Panics, showing both, if it fails.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-ec", script])
        .output()
        .expect("run sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\n{text}");
    text
}

/// A web server in namespace `peer` on 10.10.0.1:8000 serving `/blob`, `size` random
/// bytes; their MD5 sum. Stopped with `kill $(cat /tmp/peer-www.pid)`.
pub fn peer_web_server(size: usize) -> String {
    peer_web_server_on("10.10.0.1", size)
}

/// As [`peer_web_server`], on `addr` (`fd00:10::1` serves IPv6).
pub fn peer_web_server_on(addr: &str, size: usize) -> String {
    let listening = if addr.contains(':') {
        format!("[{addr}]:8000")
    } else {
        format!("{addr}:8000")
    };
    sh(&format!(
        "mkdir -p /tmp/peer-www && head -c {size} /dev/urandom > /tmp/peer-www/blob
        cd /tmp/peer-www
        ip netns exec peer python3 -m http.server 8000 --bind {addr} >/dev/null 2>&1 &
        echo $! > /tmp/peer-www.pid
        for i in $(seq 100); do
          ip netns exec peer ss -ltn | grep -qF '{listening}' && exit 0; sleep 0.2
        done; echo the peer web server did not start; exit 1"
    ));
    sh("md5sum < /tmp/peer-www/blob")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A minimal DNS server (Python) answering every query with an A record of `answer`, on UDP
/// `bind`:53 (an IPv4 or IPv6 address), started in namespace `netns` (or this one when
/// empty) in the background.
pub fn dns_server(netns: &str, bind: &str, answer: &str) {
    let prefix = if netns.is_empty() {
        String::new()
    } else {
        format!("ip netns exec {netns} ")
    };
    let octets = answer.replace('.', ",");
    let (family, listening) = if bind.contains(':') {
        ("AF_INET6", format!("[{bind}]:53 "))
    } else {
        ("AF_INET", format!("{bind}:53 "))
    };
    sh(&format!(
        "cat > /tmp/dns-{bind}.py <<'PY'
import socket
s = socket.socket(socket.{family}, socket.SOCK_DGRAM)
s.bind(('{bind}', 53))
while True:
    q, peer = s.recvfrom(512)
    end = q.index(0, 12) + 5
    r = q[:2] + b'\\x81\\x80' + q[4:6] + b'\\x00\\x01\\x00\\x00\\x00\\x00' + q[12:end]
    r += b'\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04' + bytes([{octets}])
    s.sendto(r, peer)
PY
        {prefix}python3 /tmp/dns-{bind}.py >/dev/null 2>&1 &
        for i in $(seq 100); do
          {prefix}ss -lun | grep -qF '{listening}' && exit 0; sleep 0.1
        done; echo the DNS server did not start; exit 1"
    ));
}
