//! The session layer between two nodes, driven by hand: every answer goes
//! through the real MAC checks.

use super::mac::MacScope;
use super::*;
use crate::qkd::Qos;
use uuid::Uuid;

fn local(position: u64, fingerprint: &str, ledger_new: bool, paired_before: bool) -> LocalParams {
    LocalParams {
        device: DeviceParams {
            block_size: 64,
            fingerprint: fingerprint.into(),
            position,
            reserved: position,
            ledger_new,
        },
        paired_before,
    }
}

fn ok() -> LocalParams {
    local(0, "f", false, false)
}

fn pair(secret_b: [u8; 32]) -> (LinkSession, LinkSession, Instant) {
    let now = Instant::now();
    let a = LinkSession::new(
        "node-a",
        Role::Leader,
        Some("node-b".into()),
        &[7; 32],
        1 << 20,
        now,
    );
    let b = LinkSession::new("node-b", Role::Follower, None, &secret_b, 1 << 20, now);
    (a, b, now)
}

/// Carries `req` from `from` to `to` and its answer back.
fn exchange(
    from: &mut LinkSession,
    to: &mut LinkSession,
    req: &Outgoing,
    now: Instant,
    params_to: &LocalParams,
    params_from: &LocalParams,
) -> (AnswerVerdict, LinkEvent, Answer) {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes().to_vec())
    };
    let mac = header(MAC_HEADER);
    let answer = match req.path {
        HELLO_PATH => to.receive_hello(&req.body, mac.as_deref(), params_to),
        _ => to.receive_batch(
            header(SESSION_HEADER).as_deref(),
            header(SEQ_HEADER).as_deref(),
            &req.body,
            mac.as_deref(),
        ),
    };
    let (verdict, event) = from.on_answer(
        req.id,
        answer.status,
        &answer.body,
        answer.mac.as_ref().map(|m| m.as_bytes()),
        now,
        params_from,
    );
    (verdict, event, answer)
}

fn open(a: &mut LinkSession, b: &mut LinkSession, now: Instant) {
    let hello = a.poll_transmit(now, &ok()).unwrap();
    let (v, e, _) = exchange(a, b, &hello, now, &ok(), &ok());
    assert!(matches!(
        (v, e),
        (AnswerVerdict::Accept, LinkEvent::SessionOpen { .. })
    ));
    assert!(a.is_up(now));
}

fn close(ksid: u128) -> LinkMsg {
    LinkMsg::Close {
        ksid: Uuid::from_u128(ksid),
    }
}

#[test]
fn a_session_applies_each_batch_once_in_order() {
    let (mut a, mut b, now) = pair([7; 32]);
    open(&mut a, &mut b, now);
    a.send(close(1));
    let first = a.poll_transmit(now, &ok()).unwrap();
    a.send(close(2));
    let second = a.poll_transmit(now, &ok()).unwrap();
    // The second arrives first: refused with the number expected.
    let (v, _, ans) = exchange(&mut a, &mut b, &second, now, &ok(), &ok());
    assert_eq!((v, ans.status), (AnswerVerdict::Retry, 409));
    assert!(ans.msgs.is_empty(), "a gap applies nothing");
    assert!(String::from_utf8_lossy(&ans.body).contains("\"expected\":0"));
    let (v, _, ans) = exchange(&mut a, &mut b, &first, now, &ok(), &ok());
    assert_eq!(
        (v, ans.status, ans.msgs),
        (AnswerVerdict::Accept, 204, vec![close(1)])
    );
    assert_eq!(ans.event, LinkEvent::PeerSession { restarted: false });
    let (_, _, ans) = exchange(&mut a, &mut b, &second, now, &ok(), &ok());
    assert_eq!(ans.msgs, vec![close(2)]);
    // A resend is acknowledged, not applied again.
    let (v, _, ans) = exchange(&mut a, &mut b, &second, now, &ok(), &ok());
    assert_eq!((v, ans.status), (AnswerVerdict::Accept, 204));
    assert!(ans.msgs.is_empty());
}

#[test]
fn forged_reflected_tampered_and_replayed_batches_are_refused() {
    let (mut a, mut b, now) = pair([7; 32]);
    open(&mut a, &mut b, now);
    a.send(close(1));
    let req = a.poll_transmit(now, &ok()).unwrap();
    // Reflected back to its sender: its own key does not verify there.
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes().to_vec())
    };
    let reflected = a.receive_batch(
        header(SESSION_HEADER).as_deref(),
        header(SEQ_HEADER).as_deref(),
        &req.body,
        header(MAC_HEADER).as_deref(),
    );
    assert_eq!(reflected.status, 409, "a node has no session with itself");
    let mut tampered = req.body.clone();
    let at = tampered.len() - 5;
    tampered[at] ^= 1;
    let ans = b.receive_batch(
        header(SESSION_HEADER).as_deref(),
        header(SEQ_HEADER).as_deref(),
        &tampered,
        header(MAC_HEADER).as_deref(),
    );
    assert_eq!(ans.status, 401);
    assert!(ans.msgs.is_empty());
    // Someone between the nodes answers 204 in the peer's place: that
    // answer does not verify, so the batch stays queued and is resent.
    let (v, _) = a.on_answer(req.id, 204, b"", None, now, &ok());
    assert_eq!(v, AnswerVerdict::Retry);
    let (v, _) = a.on_answer(req.id, 204, b"", Some(b"00".as_slice()), now, &ok());
    assert_eq!(v, AnswerVerdict::Retry);
    let (_, _, ans) = exchange(&mut a, &mut b, &req, now, &ok(), &ok());
    assert_eq!(ans.msgs, vec![close(1)]);
    // A new session of A: batches captured from the old one are worthless.
    a.resync(now);
    let hello = a.poll_transmit(now, &ok()).unwrap();
    let (v, e, _) = exchange(&mut a, &mut b, &hello, now, &ok(), &ok());
    assert!(matches!(
        (v, e),
        (AnswerVerdict::Accept, LinkEvent::SessionOpen { .. })
    ));
    a.send(close(3));
    let fresh = a.poll_transmit(now, &ok()).unwrap();
    let (_, _, ans) = exchange(&mut a, &mut b, &fresh, now, &ok(), &ok());
    assert_eq!(ans.msgs, vec![close(3)]);
    let replay = b.receive_batch(
        header(SESSION_HEADER).as_deref(),
        Some(b"1".as_slice()),
        &req.body,
        header(MAC_HEADER).as_deref(),
    );
    assert_eq!(replay.status, 409, "unknown (old) session");
    assert!(replay.msgs.is_empty());
}

#[test]
fn a_peer_that_forgot_the_session_starts_a_new_one_never_retried_forever() {
    let (mut a, mut b, now) = pair([7; 32]);
    open(&mut a, &mut b, now);
    let hb = a.poll_transmit(now, &ok()).unwrap(); // a heartbeat
    // B restarts: a new session state.
    let mut b2 = LinkSession::new("node-b", Role::Follower, None, &[7; 32], 1 << 20, now);
    let (v, e, ans) = exchange(&mut a, &mut b2, &hb, now, &ok(), &ok());
    assert_eq!(
        (v, e, ans.status),
        (AnswerVerdict::Reset, LinkEvent::None, 409)
    );
    assert!(!a.is_up(now));
    let hello = a.poll_transmit(now, &ok()).expect("a new hello at once");
    assert_eq!(hello.path, HELLO_PATH);
    let (_, e, _) = exchange(&mut a, &mut b2, &hello, now, &ok(), &ok());
    assert!(matches!(e, LinkEvent::SessionOpen { .. }));
    // A 4xx other than a gap: a new session, not a resend.
    let batch = a.poll_transmit(now + HEARTBEAT, &ok()).unwrap();
    let LinkRequest::Batch(nonce_s, seq, _) = batch.id else {
        panic!()
    };
    let body = br#"{"message":"nope"}"#;
    let nonce_r = nonce_r_of(&b2);
    let scope = MacScope {
        kind: b"batch",
        nonce_s: &nonce_s,
        nonce_r: &nonce_r,
        seq,
    };
    let mac = b2.answer(&scope, "node-a", 413, body.to_vec());
    let (v, _) = a.on_answer(
        batch.id,
        413,
        body,
        mac.mac.as_ref().map(|m| m.as_bytes()),
        now,
        &ok(),
    );
    assert_eq!(v, AnswerVerdict::Reset);
    let _ = b;
}

#[test]
fn replayed_and_reflected_hellos_and_unknown_session_answers_change_nothing() {
    // Review finding: a replayed or reflected hello set a refusal that
    // stuck, and an "unknown session" answer could be fetched ahead for a
    // seen session nonce and replayed to reset the sender's session.
    let (mut a, mut b, now) = pair([7; 32]);
    let hello = a.poll_transmit(now, &ok()).unwrap();
    open_with(&mut a, &mut b, &hello, now);
    let mac = hello
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(MAC_HEADER))
        .map(|(_, v)| v.as_bytes().to_vec());
    // Reflected to its sender: refused, no state.
    let reflected = a.receive_hello(&hello.body, mac.as_deref(), &ok());
    assert_eq!(reflected.status, 401);
    assert_eq!(reflected.event, LinkEvent::None);
    // Replayed later, when pairing would be refused: no state either.
    let replay = b.receive_hello(&hello.body, mac.as_deref(), &local(0, "other", true, false));
    assert_eq!(replay.status, 409);
    assert_eq!(replay.event, LinkEvent::None);
    assert!(a.refused().is_none() && b.refused().is_none());
    // An attacker who saw the session nonce asks a node that does not
    // know it, with a MAC of its own, and keeps the signed 409.
    let batch = a.poll_transmit(now + HEARTBEAT, &ok()).unwrap();
    let LinkRequest::Batch(nonce_s, seq, _) = batch.id else {
        panic!()
    };
    let mut b2 = LinkSession::new("node-b", Role::Follower, None, &[7; 32], 1 << 20, now);
    let forged = b2.receive_batch(
        Some(hex(&nonce_s).as_bytes()),
        Some(seq.to_string().as_bytes()),
        b"{}",
        Some(hex(&[9; 32]).as_bytes()),
    );
    assert_eq!(forged.status, 409);
    let (v, _) = a.on_answer(
        batch.id,
        forged.status,
        &forged.body,
        forged.mac.as_ref().map(|m| m.as_bytes()),
        now,
        &ok(),
    );
    assert_eq!(
        v,
        AnswerVerdict::Retry,
        "not this request's answer: ignored"
    );
    assert!(a.is_up(now));
    // The real request to a node that forgot the session still resets.
    let (v, _, _) = exchange(&mut a, &mut b2, &batch, now, &ok(), &ok());
    assert_eq!(v, AnswerVerdict::Reset);
}

fn open_with(a: &mut LinkSession, b: &mut LinkSession, hello: &Outgoing, now: Instant) {
    let (_, e, _) = exchange(a, b, hello, now, &ok(), &ok());
    assert!(matches!(e, LinkEvent::SessionOpen { .. }));
}

fn nonce_r_of(s: &LinkSession) -> [u8; 32] {
    s.current.as_ref().or(s.pending.as_ref()).unwrap().nonce_r
}

#[test]
fn pairing_is_refused_naming_what_differs() {
    let cases = [
        (
            local(0, "f", false, false),
            local(0, "g", false, false),
            "fingerprints differ",
        ),
        (
            local(500, "f", false, true),
            local(0, "f", true, false),
            "has no key ledger for its device",
        ),
    ];
    for (mine, theirs, expect) in cases {
        let (mut a, mut b, now) = pair([7; 32]);
        let hello = a.poll_transmit(now, &mine).unwrap();
        let (_, e, ans) = exchange(&mut a, &mut b, &hello, now, &theirs, &mine);
        assert_eq!(ans.status, 409);
        match e {
            LinkEvent::Refused(why) => assert!(why.contains(expect), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(a.refused().unwrap().contains(expect));
        // A hello may be a replay: it changes nothing on the receiver,
        // which learns of the refusal from its own (fresh) hello.
        assert!(b.refused().is_none());
        let hello_b = b.poll_transmit(now, &theirs).unwrap();
        let (_, e, _) = exchange(&mut b, &mut a, &hello_b, now, &mine, &theirs);
        assert!(
            matches!(&e, LinkEvent::Refused(why) if why.contains(expect)),
            "{e:?}"
        );
        assert!(b.refused().unwrap().contains(expect));
        assert!(!a.is_up(now));
    }
    let mut bs = ok();
    bs.device.block_size = 32;
    let (mut a, mut b, now) = pair([7; 32]);
    let hello = a.poll_transmit(now, &ok()).unwrap();
    let (_, _, ans) = exchange(&mut a, &mut b, &hello, now, &bs, &ok());
    assert!(String::from_utf8_lossy(&ans.body).contains("block_size differs"));
    // Two leaders; a wrong peer name; another secret.
    let now = Instant::now();
    let mut a = LinkSession::new("node-a", Role::Leader, None, &[7; 32], 1 << 20, now);
    let mut c = LinkSession::new("node-c", Role::Leader, None, &[7; 32], 1 << 20, now);
    let hello = a.poll_transmit(now, &ok()).unwrap();
    let (_, _, ans) = exchange(&mut a, &mut c, &hello, now, &ok(), &ok());
    assert!(String::from_utf8_lossy(&ans.body).contains("configured as leader"));
    let mut a = LinkSession::new(
        "node-a",
        Role::Leader,
        Some("node-b".into()),
        &[7; 32],
        1 << 20,
        now,
    );
    let mut x = LinkSession::new("node-x", Role::Follower, None, &[7; 32], 1 << 20, now);
    let hello = a.poll_transmit(now, &ok()).unwrap();
    let (_, _, ans) = exchange(&mut a, &mut x, &hello, now, &ok(), &ok());
    assert!(
        String::from_utf8_lossy(&ans.body).contains("expects its peer to be node-b"),
        "{:?}",
        String::from_utf8_lossy(&ans.body)
    );
    let (mut a, mut b, now) = pair([8; 32]);
    let hello = a.poll_transmit(now, &ok()).unwrap();
    let (_, e, ans) = exchange(&mut a, &mut b, &hello, now, &ok(), &ok());
    assert_eq!(ans.status, 401);
    assert!(matches!(e, LinkEvent::Refused(why) if why.contains("link.secret")));
}

#[test]
fn batches_stay_below_the_peers_body_limit() {
    let now = Instant::now();
    let mut a = LinkSession::new("node-a", Role::Leader, None, &[7; 32], 1 << 20, now);
    let mut b = LinkSession::new("node-b", Role::Follower, None, &[7; 32], 64 * 1024, now);
    open(&mut a, &mut b, now);
    let big = "x".repeat(1500);
    for i in 0..200 {
        a.send(LinkMsg::Open {
            ksid: Uuid::from_u128(i),
            qos: Qos::default(),
            source: big.clone(),
            destination: big.clone(),
            issuer: None,
        });
    }
    let mut got = 0;
    while let Some(req) = a.poll_transmit(now, &ok()) {
        assert!(req.body.len() <= 16 * 1024, "{} bytes", req.body.len());
        let (v, _, ans) = exchange(&mut a, &mut b, &req, now, &ok(), &ok());
        assert_eq!(v, AnswerVerdict::Accept);
        got += ans.msgs.len();
    }
    assert_eq!(got, 200);
}
