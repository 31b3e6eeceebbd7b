//! The control sockets: a small HTTP/1.1 server on Unix sockets, speaking two dialects.
//!
//! `vmm`'s own (`--api-socket`):
//!
//! ```text
//! GET  /v1/vm/info                 → 200 JSON: state, uptime, vCPUs, memory, interfaces, markers
//! PUT  /v1/vm/power/<action>       → 204; action is one of Virtink's power actions:
//!      PowerOff  stop at once        Shutdown  press the ACPI power button
//!      Reset     hard reset          Reboot    power button, then boot again
//!      Pause     stop the vCPUs      Resume    run them again
//!      PowerOn   boot (runPolicy Manual, or after a stop in a Virtink pod)
//! ```
//!
//! and the subset of Cloud Hypervisor's (`/api/v1/...`) that Virtink's virt-daemon drives a
//! VM pod with ([`ch`]). Every socket serves both: the paths do not overlap.
//!
//! e.g. `curl --unix-socket /run/vm.sock -X PUT http://localhost/v1/vm/power/Shutdown`.
//! One thread accepts connections and hands each to a thread of its own (at most
//! [`MAX_CLIENTS`] at once), so that a client that sends slowly or not at all holds up only
//! itself; it has [`REQUEST_DEADLINE`] for its whole request, however it dribbles the bytes.
//! Each request is handed to the VMM's event loop with a channel for the answer, so the loop
//! never blocks on a client. The socket is created mode 0600: it powers the VM off.

use devices::seccomp::Role;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

pub mod ch;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Requests larger than this (headers and body) are refused.
pub const MAX_REQUEST: usize = 64 << 10;
/// How long a client may take to send its whole request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How many clients are served at once; more are answered 503 and closed.
const MAX_CLIENTS: usize = 8;
/// How long the API waits for the event loop to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A Virtink power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Stop the guest at once.
    PowerOff,
    /// Press the ACPI power button.
    Shutdown,
    /// Hard reset.
    Reset,
    /// Power button, wait for power-off, boot again.
    Reboot,
    /// Stop the vCPUs.
    Pause,
    /// Run the vCPUs again.
    Resume,
    /// Boot a VM that is not running.
    PowerOn,
}

impl PowerAction {
    /// The action named `name` (Virtink's spelling).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "PowerOff" => Self::PowerOff,
            "Shutdown" => Self::Shutdown,
            "Reset" => Self::Reset,
            "Reboot" => Self::Reboot,
            "Pause" => Self::Pause,
            "Resume" => Self::Resume,
            "PowerOn" => Self::PowerOn,
            _ => return None,
        })
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCommand {
    /// `GET /v1/vm/info`.
    Info,
    /// `PUT /v1/vm/power/<action>`.
    Power(PowerAction),
    /// A Cloud Hypervisor call.
    Ch(ch::Call),
}

/// The event loop's answer: a status and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The body; empty for none.
    pub body: String,
    /// Whether the body is JSON (else plain text).
    pub json: bool,
}

impl ApiAnswer {
    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Self {
            status: 200,
            body,
            json: true,
        }
    }

    /// 204, no body.
    pub fn done() -> Self {
        Self {
            status: 204,
            body: String::new(),
            json: false,
        }
    }

    /// 409 with a reason as `{"error": ...}`: the action does not apply in the current state.
    pub fn conflict(why: &str) -> Self {
        Self {
            status: 409,
            body: error_body(why),
            json: true,
        }
    }

    /// `status` with a plain-text reason, as Cloud Hypervisor answers errors.
    pub fn text(status: u16, why: &str) -> Self {
        Self {
            status,
            body: why.to_string(),
            json: false,
        }
    }
}

/// A request waiting for the event loop.
#[derive(Debug)]
pub struct ApiRequest {
    /// What was asked.
    pub command: ApiCommand,
    /// Where the answer goes.
    pub answer: Sender<ApiAnswer>,
}

/// Why the socket cannot be served (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Binding failed.
    #[error("--api-socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The running API: requests arrive on `requests`, and `wakeup` is written for each.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    /// Requests from clients.
    pub requests: Receiver<ApiRequest>,
    /// Readable when a request is waiting.
    pub wakeup: EventFd,
    /// Clients whose request reached the event loop and who have not had their answer yet.
    answering: Arc<AtomicUsize>,
}

/// How long dropping the server waits for answers already given to reach their clients
/// (`vmmshutdown`'s, say, as `vmm` exits).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

impl ApiServer {
    /// Binds `path` (replacing a stale socket there) and starts serving.
    pub fn start(path: &Path) -> Result<Self, ApiError> {
        let bind_err = |source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
                std::fs::remove_file(path).map_err(bind_err)?;
            }
        }
        let listener = bind_private(path).map_err(bind_err)?;
        let wakeup = EventFd::new(EFD_NONBLOCK).map_err(bind_err)?;
        let thread_wakeup = wakeup.try_clone().map_err(bind_err)?;
        let (tx, rx) = channel();
        let answering = Arc::new(AtomicUsize::new(0));
        let thread_answering = answering.clone();
        std::thread::Builder::new()
            .name("api".into())
            .stack_size(devices::worker::THREAD_STACK)
            .spawn(move || {
                if devices::confine::confine_thread("api", Role::Api).is_ok() {
                    let to_loop = ToLoop {
                        requests: tx,
                        wakeup: thread_wakeup,
                        answering: thread_answering,
                    };
                    serve(&listener, &to_loop, REQUEST_DEADLINE);
                }
            })
            .map_err(bind_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            requests: rx,
            wakeup,
            answering,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let until = Instant::now() + FLUSH_TIMEOUT;
        while self.answering.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The client threads' way to the event loop.
struct ToLoop {
    requests: Sender<ApiRequest>,
    wakeup: EventFd,
    answering: Arc<AtomicUsize>,
}

impl ToLoop {
    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            requests: self.requests.clone(),
            wakeup: self.wakeup.try_clone()?,
            answering: self.answering.clone(),
        })
    }
}

/// Counts a client as waiting for its answer while it lives.
struct Answering<'a>(&'a AtomicUsize);

impl<'a> Answering<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds a socket at `path` that only its owner can connect to: created under umask 0177,
/// so that there is no moment at which it is open to others.
///
/// The umask is the process's: a lock keeps two binds from overlapping (and one from
/// restoring the other's mask), and `vmm` binds its socket during set-up, before any other
/// of its threads creates files, so nothing else is made under the narrow mask.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: umask takes a plain integer, touches no memory and cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; this restores the mask read before.
    unsafe { libc::umask(old) };
    let listener = bound?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn serve(listener: &UnixListener, to_loop: &ToLoop, deadline: Duration) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("api: accept: {e}");
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            // Told at once, without waiting for its request: the others are being served.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = send(&mut stream, &error(503, "too many API clients at once"));
            continue;
        }
        let done = clients.clone();
        let spawned = to_loop.try_clone().map(|to_loop| {
            std::thread::Builder::new()
                .name("api-client".into())
                .stack_size(devices::worker::THREAD_STACK)
                .spawn(move || {
                    if let Err(e) = handle(stream, &to_loop, deadline) {
                        log::debug!("api: {e}");
                    }
                    done.fetch_sub(1, Ordering::SeqCst);
                })
        });
        if !matches!(spawned, Ok(Ok(_))) {
            clients.fetch_sub(1, Ordering::SeqCst);
            log::warn!("api: cannot start a thread for a client");
        }
    }
}

fn handle(mut stream: UnixStream, to_loop: &ToLoop, deadline: Duration) -> std::io::Result<()> {
    let until = Instant::now() + deadline;
    stream.set_write_timeout(Some(deadline))?;
    let request = match read_request(Deadline {
        stream: &stream,
        until,
    }) {
        Ok(request) => request,
        // A client that connects and closes without a word (virt-daemon does, to learn
        // vmm's pid from the socket) gets no answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
        Err(e) => return send(&mut stream, &error(400, &e.to_string())),
    };
    let command = match route(&request) {
        Ok(c) => c,
        Err(answer) => return send(&mut stream, &answer),
    };
    let (tx, rx) = channel();
    let _answering = Answering::new(&to_loop.answering);
    let sent = to_loop.requests.send(ApiRequest {
        command,
        answer: tx,
    });
    if sent.is_err() || to_loop.wakeup.write(1).is_err() {
        return send(&mut stream, &error(503, "vmm is stopping"));
    }
    match rx.recv_timeout(ANSWER_TIMEOUT) {
        Ok(answer) => send(&mut stream, &answer),
        Err(_) => send(&mut stream, &error(503, "vmm did not answer")),
    }
}

/// An error answer in `vmm`'s own form: `{"error": why}`.
fn error(status: u16, why: &str) -> ApiAnswer {
    ApiAnswer {
        status,
        body: error_body(why),
        json: true,
    }
}

/// A client's stream that may be read from until one instant: every read waits only for
/// what is left of the time, so a request dribbled a byte at a time still ends on time.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request took too long to arrive",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        match stream.read(buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request took too long to arrive",
                ))
            }
            other => other,
        }
    }
}

/// A request as read: method, target and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    /// The body, when `Content-Length` announced one (at most [`MAX_REQUEST`] bytes).
    body: Option<Vec<u8>>,
}

/// Reads the request line, the headers and the body (bounded).
fn read_request(stream: impl Read) -> std::io::Result<Request> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64));
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(invalid("only HTTP/1.x is served"));
    }
    let (method, target) = (method.to_string(), target.to_string());
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(invalid("request ended inside its headers"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| invalid("bad Content-Length"))?;
        }
    }
    if content_length > MAX_REQUEST {
        return Err(invalid("request body too large"));
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => invalid("request ended inside its body"),
        _ => e,
    })?;
    Ok(Request {
        method,
        target,
        body: (content_length > 0).then_some(body),
    })
}

/// Maps a request to a command, or to the error answer.
fn route(request: &Request) -> Result<ApiCommand, ApiAnswer> {
    let (method, target) = (request.method.as_str(), request.target.as_str());
    let path = target.split('?').next().unwrap_or(target);
    if let Some(call) = path.strip_prefix(ch::PATH_PREFIX) {
        return ch::route(method, call, request.body.as_deref()).map(ApiCommand::Ch);
    }
    let not_allowed = || error(405, &format!("{method} {path} is not allowed"));
    if path == "/v1/vm/info" {
        return if method == "GET" {
            Ok(ApiCommand::Info)
        } else {
            Err(not_allowed())
        };
    }
    if let Some(action) = path.strip_prefix("/v1/vm/power/") {
        if method != "PUT" && method != "POST" {
            return Err(not_allowed());
        }
        return PowerAction::parse(action)
            .map(ApiCommand::Power)
            .ok_or_else(|| {
                error(
                    400,
                    &format!(
                        "unknown power action {action:?}: want PowerOff, Shutdown, Reset, Reboot, \
                         Pause, Resume or PowerOn"
                    ),
                )
            });
    }
    Err(error(404, &format!("no such endpoint {path}")))
}

/// An error answer's body.
#[derive(Debug, serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn error_body(message: &str) -> String {
    serde_json::to_string(&ErrorBody { error: message }).unwrap_or_default()
}

/// What [`handle`] makes of the bytes a client sent, before it asks the event loop: the
/// command, or the error answer. For the fuzz target.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn fuzz_request(bytes: &[u8]) -> Result<ApiCommand, ApiAnswer> {
    let request = read_request(bytes).map_err(|e| error(400, &e.to_string()))?;
    route(&request)
}

/// The reason phrase of the statuses this server sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn send(stream: &mut UnixStream, answer: &ApiAnswer) -> std::io::Result<()> {
    let content_type = match (answer.body.is_empty(), answer.json) {
        (true, _) => "",
        (false, true) => "Content-Type: application/json\r\n",
        (false, false) => "Content-Type: text/plain; charset=utf-8\r\n",
    };
    write!(
        stream,
        "HTTP/1.1 {} {}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        reason(answer.status),
        answer.body.len(),
        answer.body
    )?;
    stream.flush()
}

/// `GET /v1/vm/info`'s answer.
#[derive(Debug, serde::Serialize)]
pub struct VmInfo {
    /// `metadata.name`.
    pub name: String,
    /// `Running`, `Paused`, `ShuttingDown` or `Rebooting`.
    pub state: &'static str,
    /// Since this boot started.
    pub uptime_ms: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Sockets.
    pub sockets: u32,
    /// Cores in each socket.
    pub cores_per_socket: u32,
    /// Guest RAM.
    pub memory_bytes: u64,
    /// Each interface, in `spec.instance.interfaces` order.
    pub interfaces: Vec<InterfaceInfo>,
    /// Each disk, in guest order.
    pub disks: Vec<crate::disk::DiskReport>,
    /// What the guest wrote to the boot marker port, and when.
    pub boot_markers: Vec<MarkerInfo>,
}

/// An interface in [`VmInfo`].
#[derive(Debug, serde::Serialize)]
pub struct InterfaceInfo {
    /// The name in the manifest.
    pub name: String,
    /// `bridge`, `masquerade` or `sriov`.
    pub binding: &'static str,
    /// `pod` or `multus:<networkName>`.
    pub network: String,
    /// The guest's MAC.
    pub mac: String,
    /// The guest's IPv4 address, where `vmm` hands it out (DHCP delegation, masquerade).
    pub guest_ip: Option<String>,
    /// A virtio-net NIC's host side and counters.
    #[serde(flatten)]
    pub nic: Option<NicInfo>,
    /// A passed-through VF.
    #[serde(flatten)]
    pub vf: Option<VfInfo>,
}

/// A virtio-net NIC in [`InterfaceInfo`].
#[derive(Debug, serde::Serialize)]
pub struct NicInfo {
    /// The guest's MTU.
    pub mtu: u16,
    /// Its host side, as the dry run says it.
    pub host: String,
    /// Features the guest driver accepted.
    pub features: Vec<&'static str>,
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Frames the guest sent that were dropped.
    pub tx_dropped: u64,
    /// Frames the guest received.
    pub rx_frames: u64,
    /// Bytes the guest received.
    pub rx_bytes: u64,
    /// Queue pairs the guest's driver uses now (0 while it runs none), of the NIC's
    /// `max_virtqueue_pairs`.
    pub queue_pairs: u64,
}

/// A VF in [`InterfaceInfo`].
#[derive(Debug, serde::Serialize)]
pub struct VfInfo {
    /// Its PCI address on the host.
    pub vf: String,
    /// Where that address came from.
    pub vf_source: String,
}

/// A boot marker in [`VmInfo`].
#[derive(Debug, serde::Serialize)]
pub struct MarkerInfo {
    /// The value written.
    pub value: u64,
    /// When, since `vmm` started.
    pub ms_since_start: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(method: &str, target: &str) -> Result<ApiCommand, ApiAnswer> {
        route(&Request {
            method: method.into(),
            target: target.into(),
            body: None,
        })
    }

    #[test]
    fn routes() {
        assert_eq!(at("GET", "/v1/vm/info"), Ok(ApiCommand::Info));
        assert_eq!(
            at("PUT", "/v1/vm/power/Shutdown"),
            Ok(ApiCommand::Power(PowerAction::Shutdown))
        );
        assert_eq!(
            at("POST", "/v1/vm/power/Pause?x=1"),
            Ok(ApiCommand::Power(PowerAction::Pause))
        );
        assert_eq!(
            at("PUT", "/v1/vm/power/PowerOn"),
            Ok(ApiCommand::Power(PowerAction::PowerOn))
        );
        assert_eq!(at("PUT", "/v1/vm/info").unwrap_err().status, 405);
        assert_eq!(at("GET", "/v1/vm/power/Reset").unwrap_err().status, 405);
        assert_eq!(at("PUT", "/v1/vm/power/Explode").unwrap_err().status, 400);
        assert_eq!(at("GET", "/").unwrap_err().status, 404);
        assert_eq!(
            at("PUT", "/api/v1/vm.boot"),
            Ok(ApiCommand::Ch(ch::Call::Boot))
        );
        assert_eq!(at("GET", "/api/v1/vm.nope").unwrap_err().status, 404);
    }

    fn request(path: &Path, raw: &str) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_requests_through_the_event_loop() {
        let path = std::env::temp_dir().join(format!("vmm-api-{}.sock", std::process::id()));
        let server = ApiServer::start(&path).unwrap();
        let loop_side = std::thread::spawn(move || {
            for _ in 0..3 {
                let req = server.requests.recv().unwrap();
                let answer = match req.command {
                    ApiCommand::Info => ApiAnswer::json("{\"state\":\"Running\"}".into()),
                    ApiCommand::Power(_) => ApiAnswer::done(),
                    ApiCommand::Ch(call) => ApiAnswer::text(500, &format!("{call:?}")),
                };
                req.answer.send(answer).unwrap();
            }
            server
        });
        let info = request(&path, "GET /v1/vm/info HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(info.starts_with("HTTP/1.1 200 OK\r\n"), "{info}");
        assert!(info.ends_with("{\"state\":\"Running\"}"));
        let power = request(
            &path,
            "PUT /v1/vm/power/Reset HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert!(power.starts_with("HTTP/1.1 204"), "{power}");
        // Cloud Hypervisor's calls reach the loop with their body, as Go's client sends them.
        let create = request(
            &path,
            "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Length: 13\r\n\r\n\
             {\"cpus\":null}",
        );
        assert!(create.starts_with("HTTP/1.1 500"), "{create}");
        assert!(create.contains("text/plain"), "{create}");
        assert!(create.ends_with(r#"Create("{\"cpus\":null}")"#), "{create}");
        // virt-daemon connects and closes without a word to learn the pid: no answer, and the
        // server goes on.
        drop(UnixStream::connect(&path).unwrap());
        let mut silent = UnixStream::connect(&path).unwrap();
        silent.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        silent.read_to_string(&mut out).unwrap();
        assert_eq!(out, "");
        let bad = request(&path, "garbage\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let huge = request(
            &path,
            "PUT /v1/vm/power/Reset HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        );
        assert!(huge.starts_with("HTTP/1.1 400"), "{huge}");
        let server = loop_side.join().unwrap();
        drop(server);
        assert!(!path.exists(), "socket removed");
    }

    /// A server on a fresh socket whose requests are answered `{"state":"Running"}` by a
    /// stand-in for the event loop; the socket's path.
    fn answered_server(name: &str, deadline: Duration) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-api-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = bind_private(&path).unwrap();
        let (tx, rx) = channel::<ApiRequest>();
        let to_loop = ToLoop {
            requests: tx,
            wakeup: EventFd::new(EFD_NONBLOCK).unwrap(),
            answering: Arc::new(AtomicUsize::new(0)),
        };
        std::thread::spawn(move || serve(&listener, &to_loop, deadline));
        std::thread::spawn(move || {
            for req in rx {
                let _ = req
                    .answer
                    .send(ApiAnswer::json("{\"state\":\"Running\"}".into()));
            }
        });
        path
    }

    #[test]
    fn only_the_owner_may_connect() {
        use std::os::unix::fs::PermissionsExt;
        let path = answered_server("mode", REQUEST_DEADLINE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_silent_client_does_not_hold_up_the_others() {
        let path = answered_server("silent", Duration::from_secs(60));
        let mut silent: Vec<UnixStream> = (0..MAX_CLIENTS - 1)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let info = request(&path, "GET /v1/vm/info HTTP/1.1\r\n\r\n");
        assert!(info.starts_with("HTTP/1.1 200 OK\r\n"), "{info}");
        // The silent ones are still waiting to be heard, not closed.
        silent[0]
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut byte = [0u8; 1];
        let err = silent[0].read(&mut byte).unwrap_err();
        assert!(
            matches!(err.kind(), std::io::ErrorKind::WouldBlock),
            "{err}"
        );
        // With every place taken, one more is told so at once.
        silent.push(UnixStream::connect(&path).unwrap());
        let mut busy = String::new();
        UnixStream::connect(&path)
            .unwrap()
            .read_to_string(&mut busy)
            .unwrap();
        assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
        assert!(busy.contains("too many API clients"), "{busy}");
        drop(silent);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_request_dribbled_byte_by_byte_ends_at_its_deadline() {
        let path = answered_server("dribble", Duration::from_millis(300));
        let mut s = UnixStream::connect(&path).unwrap();
        // Each byte well inside any per-read timeout; the whole far beyond the deadline.
        let mut cut = false;
        for b in b"GET /v1/vm/info HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if s.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(cut || out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(!out.contains("200 OK"), "{out}");
        std::fs::remove_file(path).unwrap();
    }
}
