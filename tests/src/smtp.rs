//! A tiny SMTP server that accepts every message and keeps it, for tests of the panel's
//! e-mail. It speaks just enough of RFC 5321 for a real client (EHLO/HELO, MAIL FROM, RCPT TO,
//! DATA with dot-unstuffing, RSET, NOOP, QUIT), advertises neither STARTTLS nor AUTH, and
//! listens on loopback only. It can start on a chosen port (to play a relay that was down and
//! comes back) and can answer DATA slowly (to keep several senders busy at once).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::wait_for;

/// One accepted message: its envelope and its DATA as received (CRLF, headers included).
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The value of the first header `name` (unfolded), if any.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.split();
        let mut lines = head.split("\r\n");
        while let Some(line) = lines.next() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if line.starts_with([' ', '\t']) || !key.eq_ignore_ascii_case(name) {
                continue;
            }
            let mut value = value.trim().to_owned();
            for more in lines.by_ref() {
                if !more.starts_with([' ', '\t']) {
                    break;
                }
                value.push(' ');
                value.push_str(more.trim());
            }
            return Some(value);
        }
        None
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    /// The text body, decoded from its Content-Transfer-Encoding, with `\n` line ends.
    pub fn text(&self) -> String {
        let (_, body) = self.split();
        let encoding = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let decoded = match encoding.as_str() {
            "base64" => {
                let compact: String = body.split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("a base64 body");
                String::from_utf8(bytes).expect("a UTF-8 body")
            }
            "quoted-printable" => decode_quoted_printable(body),
            _ => body.to_owned(),
        };
        decoded.replace("\r\n", "\n")
    }

    fn split(&self) -> (&str, &str) {
        self.data
            .split_once("\r\n\r\n")
            .unwrap_or((self.data.as_str(), ""))
    }
}

fn decode_quoted_printable(body: &str) -> String {
    let mut out = Vec::new();
    let bytes = body.replace("=\r\n", "").into_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("a UTF-8 body")
}

/// How the sink behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkOptions {
    /// Listen on this port (default: a free one).
    pub port: Option<u16>,
    /// Wait this long before accepting each message's DATA.
    pub data_delay: Duration,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// A sink on a free loopback port.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(SinkOptions::default()).await
    }

    /// A sink on `port` (e.g. one handed out by [`free_port`] earlier).
    pub async fn start_on(port: u16) -> SmtpSink {
        SmtpSink::start_with(SinkOptions {
            port: Some(port),
            ..SinkOptions::default()
        })
        .await
    }

    pub async fn start_with(options: SinkOptions) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", options.port.unwrap_or(0)))
            .await
            .expect("bind the SMTP sink");
        let addr = listener.local_addr().unwrap();
        let messages: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = messages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    // A client that hangs up mid-dialogue just ends its session.
                    let _ = session(stream, store, options.data_delay).await;
                });
            }
        });
        SmtpSink {
            addr,
            messages,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages arrived; panics after `deadline`.
    pub async fn wait_for_messages(&self, n: usize, deadline: Duration) -> Vec<Received> {
        wait_for(&format!("{n} e-mail(s) at the SMTP sink"), deadline, || {
            let all = self.messages();
            async move { (all.len() >= n).then_some(all) }
        })
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port that was free a moment ago (nothing listens on it now).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().unwrap().port()
}

/// The angle-bracketed address of `MAIL FROM:<a> …` / `RCPT TO:<a> …`.
fn path_of(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(start), Some(end)) if start < end => arg[start + 1..end].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

async fn session(
    stream: TcpStream,
    store: Arc<Mutex<Vec<Received>>>,
    data_delay: Duration,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write
        .write_all(b"220 sink.test ESMTP test sink\r\n")
        .await?;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = command.split_once(' ').unwrap_or((command, ""));
        let verb = verb.to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test greets you\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n",
            "HELO" => b"250 sink.test\r\n",
            "MAIL" if arg.to_ascii_uppercase().starts_with("FROM:") => {
                mail_from = Some(path_of(&arg[5..]));
                rcpt_to.clear();
                b"250 OK\r\n"
            }
            "RCPT" if arg.to_ascii_uppercase().starts_with("TO:") => {
                if mail_from.is_none() {
                    b"503 MAIL first\r\n"
                } else {
                    rcpt_to.push(path_of(&arg[3..]));
                    b"250 OK\r\n"
                }
            }
            "DATA" => {
                if mail_from.is_none() || rcpt_to.is_empty() {
                    b"503 MAIL and RCPT first\r\n"
                } else {
                    write
                        .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut data = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == ".\r\n" || line == ".\n" {
                            break;
                        }
                        // Dot-stuffing: a leading "." of the text was doubled by the client.
                        data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    }
                    if !data_delay.is_zero() {
                        tokio::time::sleep(data_delay).await;
                    }
                    store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Received {
                            mail_from: mail_from.take().unwrap_or_default(),
                            rcpt_to: std::mem::take(&mut rcpt_to),
                            data,
                        });
                    b"250 OK queued\r\n"
                }
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                b"250 OK\r\n"
            }
            "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 Command not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
}
