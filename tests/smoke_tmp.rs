use keypipe::qkd::*;
#[test]
fn smoke() {
    let (a, b) = Engine::pair(&EngineConfig::default()).unwrap();
    let qos = Qos::default();
    let ra = a.open_connect("kms-a", "kms-b", &qos, None);
    assert_eq!(ra.status, Status::PeerNotConnected);
    let k = ra.ksid.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let rb = b.open_connect("kms-a", "kms-b", &qos, Some(k));
    assert_eq!(rb.status, Status::Successful);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = std::time::Instant::now();
    for i in 0..10000u32 {
        let mut x = [0u8; 32]; let mut y = [0u8; 32];
        let r1 = a.get_key(&k, i, &mut x, Some(64)).unwrap();
        let r2 = b.get_key(&k, i, &mut y, None).unwrap();
        assert_eq!(r1.status(), Status::Successful, "{i} {r1:?}");
        assert_eq!(r2.status(), Status::Successful, "{i} {r2:?}");
        assert_eq!(x, y);
    }
    eprintln!("{:?} {:?}", t.elapsed(), a.stats());
}
