//! A man in the middle between the devices and the server: plain HTTP passes untouched, every
//! signalling frame is recorded and may be altered by the test (as a compromised server or network
//! would), per device and direction.

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Which way a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From a device to the server.
    Up,
    /// From the server to a device.
    Down,
}

/// Alters a frame of the connection of `device` going `way`; `false` drops it.
pub type Tamper = Box<dyn FnMut(&str, Way, &mut Value) -> bool + Send>;

/// The relay, listening on its own port and forwarding to the server's.
pub struct Relay {
    frames: Arc<Mutex<Vec<String>>>,
    tamper: Arc<Mutex<Option<Tamper>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Relay {
    /// Listens on `127.0.0.1:port` and forwards to `127.0.0.1:upstream`.
    pub fn start(port: u16, upstream: u16) -> Relay {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let tamper: Arc<Mutex<Option<Tamper>>> = Arc::new(Mutex::new(None));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let shared = (frames.clone(), tamper.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("the relay binds");
                let _ = ready.send(());
                let serve = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(connection(stream, upstream, shared.clone()));
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        is_ready
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the relay starts");
        Relay {
            frames,
            tamper,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// From now on, frames go through `tamper` (`None`: relayed as they are).
    pub fn set_tamper(&self, tamper: Option<Tamper>) {
        if let Ok(mut slot) = self.tamper.lock() {
            *slot = tamper;
        }
    }

    /// Every signalling frame relayed so far (as received, before any alteration).
    pub fn frames(&self) -> Vec<String> {
        self.frames.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

type Shared = (Arc<Mutex<Vec<String>>>, Arc<Mutex<Option<Tamper>>>);

/// The request head, peeked (left in the socket) so plain HTTP can be spliced unchanged.
async fn peek_head(stream: &TcpStream) -> Option<String> {
    let mut buffer = vec![0u8; 16 * 1024];
    for _ in 0..200 {
        let n = stream.peek(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        let head = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if let Some(end) = head.find("\r\n\r\n") {
            return Some(head[..end].to_owned());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    None
}

async fn connection(mut stream: TcpStream, upstream: u16, shared: Shared) {
    let Some(head) = peek_head(&stream).await else {
        return;
    };
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    if !path.starts_with("/api/v1/ws") {
        if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut server).await;
        }
        return;
    }
    let device = path
        .split("device=")
        .nth(1)
        .map(|d| d.split('&').next().unwrap_or(d).to_owned())
        .unwrap_or_default();
    let Ok(mut request) = format!("ws://127.0.0.1:{upstream}{path}").into_client_request() else {
        return;
    };
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && ["authorization", "origin", "cookie"].contains(&name.trim().to_lowercase().as_str())
            && let (Ok(name), Ok(value)) = (
                name.trim()
                    .parse::<tokio_tungstenite::tungstenite::http::HeaderName>(),
                value.trim().parse(),
            )
        {
            request.headers_mut().insert(name, value);
        }
    }
    let server = match tokio_tungstenite::connect_async(request).await {
        Ok((server, _)) => server,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status();
            let _ = stream
                .write_all(
                    format!(
                        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
        Err(_) => {
            let _ = stream
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
    };
    let Ok(client) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut client_tx, mut client_rx) = client.split();
    let (mut server_tx, mut server_rx) = server.split();
    loop {
        let (message, way) = tokio::select! {
            m = client_rx.next() => (m, Way::Up),
            m = server_rx.next() => (m, Way::Down),
        };
        let Some(Ok(message)) = message else { break };
        let message = match message {
            Message::Text(text) => {
                if let Ok(mut frames) = shared.0.lock() {
                    frames.push(text.to_string());
                }
                let mut value: Value = match serde_json::from_str(text.as_str()) {
                    Ok(value) => value,
                    Err(_) => Value::String(text.to_string()),
                };
                let keep = match shared.1.lock() {
                    Ok(mut tamper) => tamper.as_mut().is_none_or(|t| t(&device, way, &mut value)),
                    Err(_) => true,
                };
                if !keep {
                    continue;
                }
                Message::text(value.to_string())
            }
            Message::Close(_) => break,
            other => other,
        };
        let sent = match way {
            Way::Up => server_tx.send(message).await,
            Way::Down => client_tx.send(message).await,
        };
        if sent.is_err() {
            break;
        }
    }
}
