//! A TCP forwarder a test puts between the panel and a server (PostgreSQL) to cut the server
//! off and bring it back without touching the server itself, which other tests share.
//!
//! `stop` closes the listener and every forwarded connection, as a server that went down
//! would (new connections are refused, open ones end); `start` listens again on the same
//! port. Stopped when dropped.

use std::net::SocketAddr;

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

pub struct Proxy {
    /// Where clients connect: 127.0.0.1 and a port fixed for the proxy's life.
    pub addr: SocketAddr,
    target: SocketAddr,
    running: Option<Running>,
}

/// The accept loop and the switch that ends it and every connection it forwards.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target`, listening on a free loopback port.
    pub async fn to(target: SocketAddr) -> Proxy {
        let mut proxy = Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            target,
            running: None,
        };
        proxy.start().await;
        proxy
    }

    /// A proxy to the PostgreSQL server of `url` (a `postgres://` URL).
    pub async fn to_postgres(url: &str) -> Proxy {
        let url = reqwest::Url::parse(url).expect("a PostgreSQL URL");
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(5432);
        let target = tokio::net::lookup_host((host, port))
            .await
            .expect("resolve the PostgreSQL host")
            .next()
            .expect("the PostgreSQL host has an address");
        Proxy::to(target).await
    }

    /// `url` (any URL with a host) pointed at the proxy instead.
    pub fn url_via(&self, url: &str) -> String {
        let mut url = reqwest::Url::parse(url).expect("a URL");
        url.set_host(Some(&self.addr.ip().to_string()))
            .expect("the URL takes a host");
        url.set_port(Some(self.addr.port()))
            .expect("the URL takes a port");
        url.to_string()
    }

    /// Listens (again, on the same port after `stop`) and forwards each connection.
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "the proxy is already running");
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        // The port was ours a moment ago; its closed connections may linger in TIME_WAIT.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.addr).expect("bind the proxy's port");
        let listener = socket.listen(128).expect("listen");
        self.addr = listener.local_addr().expect("the proxy's address");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept(listener, self.target, stopped));
        self.running = Some(Running { stop, task });
    }

    /// Closes the listener and every forwarded connection; returns once they are closed.
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("the proxy is running");
        let _ = running.stop.send(true);
        running.task.await.expect("the proxy's accept loop");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
        }
    }
}

/// Accepts until stopped; then drops the listener and aborts (so closes) every connection.
async fn accept(listener: TcpListener, target: SocketAddr, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((inbound, _)) = accepted {
                    connections.spawn(forward(inbound, target));
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn forward(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
}
