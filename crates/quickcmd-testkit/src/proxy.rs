//! [`CutProxy`]: a loopback TCP proxy whose live connections can be cut at will (for tests of
//! a client that must resume a stream after its connection dies).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A loopback TCP proxy to a target port whose live connections can be cut at will; it
/// keeps accepting new ones.
pub struct CutProxy {
    pub port: u16,
    live: Arc<Mutex<Vec<TcpStream>>>,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn start(target_port: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (task_live, task_accepted, task_stop) = (live.clone(), accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if task_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                task_accepted.fetch_add(1, Ordering::SeqCst);
                {
                    let mut live = task_live.lock().expect("lock");
                    if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
                        live.push(a);
                        live.push(b);
                    }
                }
                pipe(&client, &upstream);
                pipe(&upstream, &client);
            }
        });
        CutProxy {
            port,
            live,
            accepted,
            stop,
        }
    }

    /// Cuts every connection open now; returns how many sockets were cut.
    pub fn cut(&self) -> usize {
        let mut live = self.live.lock().expect("lock");
        for stream in live.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let count = live.len();
        live.clear();
        count
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies one direction of a proxied connection until either side closes, then closes both.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
