//! A fault-injecting TCP proxy between two `arbor` processes, for one port of one directed
//! pair of nodes. Its faults are physical, as a network's are: a cut (connections closed and
//! new ones refused), a stall (connections stay open but nothing moves, as behind a dropped
//! route: TCP's own flow control holds the sender) and a delay. Bytes are never dropped
//! from the middle of a stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Close connections and refuse new ones.
    Cut,
    /// Keep connections open and move nothing, either way.
    Stall,
    /// Forward each read after a delay.
    Delay(Duration),
}

pub struct Proxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy on a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        // A port the process has not handed to a node (an ephemeral one could be).
        let listener = TcpListener::bind(("127.0.0.1", super::support::free_port()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let f = fault.clone();
        let task = tokio::spawn(async move {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                conns.retain(|c| !c.is_finished());
                if *f.lock().unwrap() == Fault::Cut {
                    drop(inbound);
                    continue;
                }
                let f = f.clone();
                conns.push(tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::select! {
                        _ = pipe(ir, ow, f.clone()) => {}
                        _ = pipe(or, iw, f) => {}
                    }
                }));
            }
        });
        Proxy { addr, fault, task }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<Fault>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A stall stops reading (the sender's window fills); a cut ends the connection.
        loop {
            let now = *fault.lock().unwrap();
            match now {
                Fault::Stall => {}
                Fault::Cut => return,
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        // What was read before a stall or a cut began is delivered (or lost with the
        // connection, as on a real link), never dropped from a live stream.
        let now = *fault.lock().unwrap();
        if let Fault::Delay(d) = now {
            tokio::time::sleep(d).await;
        }
        if *fault.lock().unwrap() == Fault::Cut {
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
