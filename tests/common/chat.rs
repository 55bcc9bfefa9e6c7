//! A chat member on the line protocol, for the tests of the chat service: it takes a
//! nick on connect and reads lines with a safety-net timeout.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a member waits for a line before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A line-protocol member with a nick of its choosing.
pub struct Member {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
    pub nick: String,
}

impl Member {
    /// Connects, reads the welcome and takes `nick`.
    pub fn connect(addr: SocketAddr, nick: &str) -> Member {
        let w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut c = Member {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
            nick: nick.to_string(),
        };
        let welcome = c.line();
        assert!(welcome.starts_with("WELCOME guest-"), "{welcome}");
        c.send(&format!("NICK {nick}"));
        c.expect(&format!("OK NICK {nick}"));
        c
    }

    pub fn send(&mut self, line: &str) {
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// The next line, without its `\n`.
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => panic!("{}: connection closed", self.nick),
            Ok(_) => {}
            Err(e) => panic!("{}: no line within {READ_TIMEOUT:?}: {e}", self.nick),
        }
        s.trim_end_matches('\n').to_string()
    }

    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(), want, "{}", self.nick);
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn until(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return l;
            }
        }
    }
}

/// The http and chat services of one process, sharing its hub, as `serve` runs them;
/// drained and waited for when dropped.
pub struct Running {
    pub server: Option<multiclient::model::Server>,
    pub http: multiclient::model::Listening,
    pub chat: multiclient::model::Listening,
}

impl Running {
    /// Both services on loopback port 0 under `model`, with `opts`.
    pub fn start(
        model: multiclient::model::Model,
        limits: multiclient::model::Limits,
        opts: &multiclient::serve::ServiceOptions,
    ) -> Running {
        use multiclient::serve::ServiceName;
        let mut server = multiclient::model::Server::new(model, limits).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let http = ServiceName::Http.listen(&mut server, any, opts).unwrap();
        let chat = ServiceName::Chat.listen(&mut server, any, opts).unwrap();
        Running {
            server: Some(server),
            http,
            chat,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.drain().start();
            s.wait();
        }
    }
}
