//! The conformance matrix: every seed service under every model, over real sockets,
//! with the seeds' exact bytes.

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::*;
use multiclient::model::{Limits, Model};
use multiclient::service::{ack, greet, hello};

fn ack_conversation(model: Model) {
    let srv = start(model, Limits::default(), ack::Ack);
    let mut c = connect(srv.addr());
    round_trip(&mut c, b"Hello, server", b"ACK!");
    round_trip(&mut c, "héllo wörld".as_bytes(), b"ACK!");
    // Invalid UTF-8 is logged lossily and acknowledged like anything else.
    round_trip(&mut c, &[0xff, 0xfe, 0xc3, 0x28, 0x00], b"ACK!");
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c), b"", "close on EOF");
}

fn greet_conversation(model: Model) {
    let srv = start(model, Limits::default(), greet::Greet);
    let mut c = connect(srv.addr());
    assert_eq!(read_n(&mut c, greet::GREETING.len()), greet::GREETING);
    for _ in 0..3 {
        round_trip(&mut c, greet::CLIENT_REPLY, greet::GREETING);
    }
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut c), b"");
}

fn hello_conversation(model: Model) {
    let srv = start(model, Limits::default(), hello::Hello);
    for i in 0..3 {
        let mut c = connect(srv.addr());
        c.write_all(format!("Hello from client {i}").as_bytes())
            .unwrap();
        assert_eq!(read_to_end(&mut c), hello::REPLY);
    }
}

macro_rules! matrix {
    ($($name:ident: $model:expr;)*) => {
        mod ack_under { use super::*; $(#[test] fn $name() { ack_conversation($model) })* }
        mod greet_under { use super::*; $(#[test] fn $name() { greet_conversation($model) })* }
        mod hello_under { use super::*; $(#[test] fn $name() { hello_conversation($model) })* }
    };
}

matrix! {
    single: Model::Single;
    threads: Model::Threads;
    pool: Model::Pool { workers: 10 };
    async_multi: Model::Async { workers: 2 };
    async_one_thread: Model::Async { workers: 1 };
}
