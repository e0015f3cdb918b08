//! A fault-injecting TCP proxy: one per directed pair of nodes, so a test can drop, delay or
//! cut the traffic from one node to another without privileges.

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
    /// Accept and read, but forward nothing (a black hole).
    Drop,
    /// Close connections and refuse new ones.
    Cut,
    /// Forward after a delay.
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
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
                let f2 = f.clone();
                conns.push(tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    let a = pipe(ir, ow, f2.clone());
                    let b = pipe(or, iw, f2);
                    tokio::select! { _ = a => {}, _ = b => {} }
                }));
                let _ = &conns;
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
        // Wake up regularly so a Cut closes idle connections too.
        let n = match tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await {
            Err(_) => {
                if *fault.lock().unwrap() == Fault::Cut {
                    return;
                }
                continue;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        let mode = *fault.lock().unwrap();
        match mode {
            Fault::Pass => {}
            Fault::Drop => continue,
            Fault::Cut => return,
            Fault::Delay(d) => tokio::time::sleep(d).await,
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
