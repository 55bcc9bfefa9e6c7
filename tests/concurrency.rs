//! What each model promises about clients served at the same time: the seeds'
//! "if one client takes time, others must wait" under `single`, a pool that starves
//! beyond its workers, and threads and async serving everyone at once.

mod common;

use std::net::Shutdown;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use multiclient::model::{Limits, Model};
use multiclient::service::ack::Ack;

/// Long enough that a served client would have its answer many times over.
const WINDOW: Duration = Duration::from_millis(300);

fn many_clients_answered_while_one_stays_silent(model: Model) {
    let srv = start(model, Limits::default(), Ack);
    let addr = srv.addr();
    let mut silent = connect(addr);
    let n = 200;
    let barrier = Arc::new(Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = connect(addr);
                barrier.wait();
                round_trip(&mut c, format!("client {i}").as_bytes(), b"ACK!");
                c.shutdown(Shutdown::Write).unwrap();
                read_to_end(&mut c)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client thread"), b"");
    }
    // The silent client was connected all along and is still served.
    round_trip(&mut silent, b"finally", b"ACK!");
}

#[test]
fn threads_serve_200_clients_while_one_is_silent() {
    many_clients_answered_while_one_stays_silent(Model::Threads);
}

#[test]
fn pool_serves_200_clients_while_one_is_silent() {
    many_clients_answered_while_one_stays_silent(Model::Pool { workers: 10 });
}

#[test]
fn async_serves_200_clients_while_one_is_silent() {
    many_clients_answered_while_one_stays_silent(Model::Async { workers: 2 });
}

#[test]
fn async_single_thread_event_loop_serves_200_clients_while_one_is_silent() {
    many_clients_answered_while_one_stays_silent(Model::Async { workers: 1 });
}

#[test]
fn single_makes_the_second_client_wait_until_the_first_leaves() {
    let srv = start(Model::Single, Limits::default(), Ack);
    let mut first = connect(srv.addr());
    round_trip(&mut first, b"first", b"ACK!");
    let mut second = connect(srv.addr());
    second.write_all_checked(b"second");
    assert!(
        silent_for(&mut second, WINDOW),
        "second client answered while the first was connected"
    );
    round_trip(&mut first, b"still first", b"ACK!");
    drop(first);
    assert_eq!(read_n(&mut second, 4), b"ACK!");
}

#[test]
fn pool_of_two_makes_the_third_client_wait() {
    let srv = start(Model::Pool { workers: 2 }, Limits::default(), Ack);
    let mut a = connect(srv.addr());
    let mut b = connect(srv.addr());
    round_trip(&mut a, b"a", b"ACK!");
    round_trip(&mut b, b"b", b"ACK!");
    let mut c = connect(srv.addr());
    c.write_all_checked(b"c");
    assert!(
        silent_for(&mut c, WINDOW),
        "third client served with both workers busy"
    );
    round_trip(&mut b, b"b again", b"ACK!");
    drop(a);
    assert_eq!(read_n(&mut c, 4), b"ACK!");
}

trait WriteChecked {
    fn write_all_checked(&mut self, b: &[u8]);
}

impl WriteChecked for std::net::TcpStream {
    fn write_all_checked(&mut self, b: &[u8]) {
        std::io::Write::write_all(self, b).expect("write");
    }
}

fn thousand_clients_connected_at_once_are_all_served(model: Model) {
    let srv = start(model, Limits::default(), Ack);
    // All 1,000 are connected before any is answered.
    let mut clients: Vec<_> = (0..1000).map(|_| connect(srv.addr())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all_checked(format!("client {i}").as_bytes());
    }
    for c in clients.iter_mut() {
        assert_eq!(read_n(c, 4), b"ACK!");
    }
    assert_eq!(
        srv.listening
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1000
    );
}

#[test]
fn thousand_clients_at_once_under_async() {
    thousand_clients_connected_at_once_are_all_served(Model::Async { workers: 2 });
}

#[test]
fn thousand_clients_at_once_under_threads() {
    thousand_clients_connected_at_once_are_all_served(Model::Threads);
}
