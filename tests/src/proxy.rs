//! A TCP proxy on loopback that can cut its connections mid-stream or
//! record what crossed it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A TCP proxy on 127.0.0.1 in front of a server, whose connections a test can
/// cut mid-stream (a network failure between two servers). Its accept loop
/// stops when the proxy is dropped, and after ten minutes at the latest.
#[derive(Debug)]
pub struct CutProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    captured: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
}

/// At most this much is kept by a recording proxy.
const MAX_CAPTURE_BYTES: usize = 256 << 20;

/// Copies `from` to `to` until either side ends, keeping a copy of the bytes
/// in `capture` when there is one.
fn relay(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    capture: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(capture) = &capture {
            let mut kept = capture.lock().expect("capture");
            if kept.len() + n <= MAX_CAPTURE_BYTES {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl CutProxy {
    /// Starts forwarding to `target`.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(target, None)
    }

    /// Starts forwarding to `target`, keeping every byte that passes in
    /// either direction (a wire capture).
    pub fn recording(target: SocketAddr) -> Self {
        Self::start_with(target, Some(std::sync::Arc::default()))
    }

    /// The bytes seen so far in both directions (empty unless recording).
    pub fn captured(&self) -> Vec<u8> {
        self.captured
            .as_ref()
            .map(|c| c.lock().expect("capture").clone())
            .unwrap_or_default()
    }

    fn start_with(
        target: SocketAddr,
        captured: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s, k, rec) = (cut.clone(), stop.clone(), conns.clone(), captured.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) if !c.load(Ordering::Relaxed) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = std::net::TcpStream::connect(target) else {
                            continue;
                        };
                        let pairs = [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ];
                        for (from, to) in pairs {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let rec = rec.clone();
                                std::thread::spawn(move || relay(from, to, rec));
                            }
                        }
                        let mut held = k.lock().expect("conns");
                        held.push(client);
                        held.push(server);
                    }
                    Ok((refused, _)) => drop(refused),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CutProxy {
            addr,
            cut,
            stop,
            conns,
            captured,
        }
    }

    /// Cuts every open connection and refuses new ones until [`CutProxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }
}
