//! Idle connections must stay small: these sizes are most of what one costs
//! (with its readiness slot and the shard's maps; see benches/README.md).

#[test]
fn idle_connection_structures_stay_small() {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap();
    ex.run(async {
        let readiness = std::rc::Rc::new(crate::readiness::Readiness::new("test", || {}).unwrap());
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.listen(16).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let listener = crate::readiness::Listener::new(socket, &readiness).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let s = listener.accept().await.unwrap();
        let (m, _) = crate::bus::build(1, 4).unwrap();
        let cfg = std::sync::Arc::new(crate::config::Config::defaults());
        let stats: std::sync::Arc<[crate::metrics::ShardStats]> = vec![crate::metrics::ShardStats::default()].into();
        let shard = std::rc::Rc::new(crate::shard::Shard::new(0, cfg, m, stats, crate::shard::NodeShared { connections: Default::default(), admission: Default::default(), sessions: std::sync::Arc::new(crate::bus::sessions::Sessions::new(1)) }, readiness));
        let task = super::serve(shard, s);
        assert!(std::mem::size_of_val(&task) <= 256, "connection task is {} bytes", std::mem::size_of_val(&task));
        // Rc<Peer> must fit mimalloc's 128-byte size class.
        assert!(std::mem::size_of::<super::Peer>() + 16 <= 128, "Peer is {} bytes", std::mem::size_of::<super::Peer>());
        // A topic with one subscriber (a user's own topic, say) holds it inline.
        let entry = std::mem::size_of::<crate::topic::registry::TopicEntry>();
        assert!(entry <= 112, "a topic's entry is {entry} bytes");
    });
}
