//! The replica daemons of a run: their pools on crashable devices, the
//! replica's session core on every connection, and their rebuild links.
//!
//! What a daemon's shell does is played here, in the same order: the first
//! packet of a connection opens the session (`session::core::open`), every
//! later one is routed in arrival order (`SessionCore::route`), an IO runs
//! as a task of its own (at most `MAX_IN_FLIGHT_PER_CONNECTION` per
//! connection: past that the connection is not read, its packets wait),
//! replies go back in completion order. A crash kills the daemon's tasks
//! where they stand and reopens its pool from what the device kept.

use super::*;

use cstor_replica::limits::{MAX_IN_FLIGHT_PER_CONNECTION, REPLY_QUEUE};

impl World<'_> {
    /// Creates a replica daemon with a fresh pool holding the volume;
    /// returns its host number.
    pub(super) fn new_replica(
        &mut self,
        device_bytes: u64,
        _first: bool,
        stale: bool,
    ) -> Result<u32, String> {
        let host = self.replicas.len() as u32;
        let device = Arc::new(FaultyDevice::new(CrashDevice::new(device_bytes as usize)));
        let opts = pool_options();
        let dev: DeviceRef = device.clone();
        let pool = at_once(Pool::create(vec![dev], &opts))?.map_err(|e| format!("pool: {e}"))?;
        let size = self.target_volume_size().unwrap_or(self.plan.volume_bytes);
        let volume = at_once(pool.create_volume(VOLUME, size, BLOCK as u32, Provisioning::Thin))?
            .map_err(|e| format!("volume: {e}"))?;
        if stale {
            // A reused disk (`Options::stale_adds`): a few runs of random
            // blocks, of no io_seq (0: the replica knows no history, as one
            // whose id the membership does not know).
            let block = BLOCK as u64;
            let blocks = size / block;
            for _ in 0..self.rng.range(1, 12) {
                let len = self.rng.range(1, 64).min(blocks.max(1));
                let at = self.rng.range(0, blocks.saturating_sub(len).max(1));
                let fill = (self.rng.next_u64() % 255 + 1) as u8;
                let data = vec![fill; len as usize * BLOCK];
                at_once(volume.write(at * block, &data, 0))?
                    .map_err(|e| format!("stale data: {e}"))?;
            }
        }
        drop(volume);
        at_once(pool.flush())?.map_err(|e| format!("flush: {e}"))?;
        at_once(pool.close())?.map_err(|e| format!("close: {e}"))?;
        drop(pool);
        self.replicas.push(Replica {
            host,
            addr: replica_addr(host),
            pool_name: format!("pool{host}"),
            device,
            running: None,
            lives: 0,
            retired: false,
            disk_armed: false,
            out_of_space: false,
        });
        self.start_replica(host)?;
        Ok(host)
    }

    /// The volume's current size as the open target knows it.
    fn target_volume_size(&self) -> Option<u64> {
        match &self.target.as_ref()?.state {
            TargetState::Open(v) => Some(v.controller.size_bytes()),
            TargetState::Probing { .. } => None,
        }
    }

    /// Starts (or restarts) the daemon of `host` on its device.
    pub(super) fn start_replica(&mut self, host: u32) -> Result<(), String> {
        let node = self.node();
        let Some(r) = self.replicas.get_mut(host as usize) else {
            return Err(format!("no replica {host}"));
        };
        if r.running.is_some() || r.retired {
            return Ok(());
        }
        r.lives += 1;
        let dev: DeviceRef = r.device.clone();
        let pool = at_once(Pool::open(vec![dev], &pool_options()))?
            .map_err(|e| format!("pool {} does not open after a crash: {e}", r.pool_name))?;
        let registry = Arc::new(Registry::new(Arc::new(pool)));
        r.running = Some(Running {
            life: r.lives,
            node,
            registry,
            conns: BTreeMap::new(),
            ios: 0,
            stop: CancellationToken::new(),
        });
        Ok(())
    }

    /// Kills the daemon of `host`: `power_cut` loses what was not synced
    /// (the device decides, seeded; `torn` tears the last write), else the
    /// process alone dies and the OS keeps every write (but the pool's
    /// uncommitted metadata is lost all the same).
    pub(super) fn crash_replica(&mut self, host: u32, power_cut: bool, torn: bool) {
        let seed = self.rng.next_u64();
        // A tear it may serve: no healthy peer to rebuild it from, or a
        // consistency factor of 1 (an acknowledged write may be on this
        // replica alone: a peer, healthy or not, cannot give it back).
        let cf_one = self.volume_view().is_some_and(|(_, _, cf, _)| cf <= 1);
        let tears = power_cut && torn && (!self.healthy_peer(host) || cf_one);
        if self.opts.verbose {
            let now = self.now();
            eprintln!("{now:>12}   crash replica {host}: power cut {power_cut}, torn {torn}, tears a served block {tears}");
        }
        let Some(r) = self.replicas.get_mut(host as usize) else {
            return;
        };
        let retired = r.retired;
        let Some(run) = r.running.take() else {
            return;
        };
        run.stop.cancel();
        let node = run.node;
        let conns: Vec<ConnId> = run.conns.keys().copied().collect();
        for (_, c) in run.conns {
            if let RConn::Open { session, stop, .. } = c {
                stop.cancel();
                session.close();
            }
        }
        let dev = r.device.inner();
        dev.cut_power();
        let image = if power_cut {
            let policy = if torn {
                CrashPolicy::torn(seed)
            } else {
                CrashPolicy::whole(seed)
            };
            dev.crash_image(policy)
        } else {
            dev.live_image()
        };
        match CrashDevice::from_image(image, cstor_engine::io::Device::alignment(dev)) {
            Ok(d) => {
                r.device = Arc::new(FaultyDevice::new(d));
                r.disk_armed = false;
            }
            Err(e) => {
                let name = r.pool_name.clone();
                self.fail(format!("crash image of {name}: {e}"));
            }
        }
        self.exec.kill(node);
        for (a, b, link) in &self.rebuild_links {
            if *a == node || *b == node {
                link.break_link();
            }
        }
        self.rebuild_links.retain(|(_, _, l)| !l.is_done());
        // Every connection of the host, also those whose first packet has
        // not arrived yet: the peer sees them reset.
        let mut conns = conns;
        conns.extend(self.net.conns_of(Host::Replica(host)));
        conns.sort_unstable();
        conns.dedup();
        for conn in conns {
            self.close_conn(conn);
        }
        if !retired {
            // Killed or cut, a daemon loses what its pool had not committed
            // (a kill too: the pending metadata records die with it).
            let now = self.now();
            self.model.power_cut(now, tears);
        }
    }

    /// Has the open volume a healthy member other than `host` (one a
    /// rebuild of `host` would come from)? Without an open target: has
    /// the volume another member at all.
    fn healthy_peer(&self, host: u32) -> bool {
        let addr = self.replicas.get(host as usize).map(|r| r.addr);
        match self.volume_view() {
            Some((states, addrs, _, _)) => states
                .iter()
                .zip(&addrs)
                .any(|(s, a)| *s == ReplicaState::Healthy && Some(*a) != addr),
            None => self.replicas.iter().any(|r| r.host != host && !r.retired),
        }
    }

    /// Closes `conn` (both ends learn of it after their delay).
    #[track_caller]
    pub(super) fn close_conn(&mut self, conn: ConnId) {
        let now = self.now();
        if self.opts.verbose && self.net.is_open(conn) {
            eprintln!(
                "{now:>12}   close conn {conn} from {}",
                std::panic::Location::caller()
            );
        }
        if let Some(ends) = self.net.close(&mut self.rng, now, conn) {
            for (end, at) in ends {
                self.schedule_at(at, Ev::Closed { conn, end });
            }
        }
    }

    /// The running daemon that serves `conn` (server end), if any.
    fn serving(&self, conn: ConnId) -> Option<u32> {
        match self.net.host(conn, End::Server)? {
            Host::Replica(h) => Some(h),
            _ => None,
        }
    }

    /// A frame reaches a replica.
    pub(super) fn replica_frame(&mut self, conn: ConnId, packet: Packet) {
        let Some(host) = self.serving(conn) else {
            return;
        };
        let peer = Peer::Authenticated(Identity::Target {
            volumes: vec![VOLUME.to_string()],
        });
        let outbox = Rc::clone(&self.outbox);
        let Some(r) = self.replicas.get_mut(host as usize) else {
            return;
        };
        let Some(run) = r.running.as_mut() else {
            return; // a dead daemon reads nothing; the close is on its way
        };
        match run.conns.get_mut(&conn) {
            None => {
                run.conns.insert(conn, RConn::Opening(VecDeque::new()));
                let registry = Arc::clone(&run.registry);
                let life = run.life;
                self.exec.spawn(run.node, async move {
                    let opening = rcore::open(&registry, conn, peer, packet).await;
                    outbox.borrow_mut().push(Out::Opened {
                        host,
                        life,
                        conn,
                        opening,
                    });
                });
            }
            Some(RConn::Opening(waiting)) => waiting.push_back(packet),
            Some(RConn::Open { waiting, .. }) => {
                waiting.push_back(packet);
                self.pump_replica_conn(host, conn);
            }
        }
    }

    /// A replica's handshake finished.
    pub(super) fn replica_opened(&mut self, host: u32, life: u64, conn: ConnId, opening: Opening) {
        let (reply, session) = match opening {
            Opening::Open { session, reply } => (reply, Some(session)),
            Opening::Refused { reply, .. } => (reply, None),
        };
        let alive = self
            .replicas
            .get(host as usize)
            .and_then(|r| r.running.as_ref())
            .is_some_and(|run| run.life == life);
        if !alive {
            if let Some(s) = session {
                s.close();
            }
            return;
        }
        self.send_frame(conn, End::Client, reply);
        let Some(session) = session else {
            if let Some(run) = running_mut(&mut self.replicas, host) {
                run.conns.remove(&conn);
            }
            self.close_conn(conn);
            return;
        };
        let outbox = Rc::clone(&self.outbox);
        let Some(run) = running_mut(&mut self.replicas, host) else {
            return;
        };
        let waiting = match run.conns.remove(&conn) {
            Some(RConn::Opening(w)) => w,
            _ => VecDeque::new(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Packet>(REPLY_QUEUE);
        // The writer: replies leave in the order they were queued.
        self.exec.spawn(run.node, async move {
            while let Some(packet) = rx.recv().await {
                outbox.borrow_mut().push(Out::Frame { conn, packet });
            }
        });
        let stop = run.stop.child_token();
        run.conns.insert(
            conn,
            RConn::Open {
                session: Rc::new(session),
                replies: tx,
                stop,
                waiting,
                in_flight: 0,
            },
        );
        self.pump_replica_conn(host, conn);
    }

    /// Routes the packets of `conn` that may be read now.
    pub(super) fn pump_replica_conn(&mut self, host: u32, conn: ConnId) {
        loop {
            let outbox = Rc::clone(&self.outbox);
            let io = self.replica_rebuild_io(host);
            let Some(run) = running_mut(&mut self.replicas, host) else {
                return;
            };
            let node = run.node;
            let life = run.life;
            let Some(RConn::Open {
                session,
                replies,
                stop,
                waiting,
                in_flight,
            }) = run.conns.get_mut(&conn)
            else {
                return;
            };
            if session.is_fenced() {
                session.close();
                run.conns.remove(&conn);
                self.close_conn(conn);
                return;
            }
            if *in_flight >= MAX_IN_FLIGHT_PER_CONNECTION {
                return;
            }
            let Some(packet) = waiting.pop_front() else {
                return;
            };
            match session.route(packet) {
                Routed::Reply(Some(reply)) => {
                    let tx = replies.clone();
                    self.exec.spawn(node, async move {
                        let _ = tx.send(reply).await;
                    });
                }
                Routed::Reply(None) => {}
                Routed::Io(task) => {
                    *in_flight += 1;
                    run.ios += 1;
                    let tx = replies.clone();
                    self.exec.spawn(node, async move {
                        let reply = task.run().await;
                        let _ = tx.send(reply).await;
                        outbox.borrow_mut().push(Out::IoDone { host, life, conn });
                    });
                }
                Routed::RebuildSink { request, start } => {
                    let reply = match io {
                        Some(io) => session.start_sink(io, &request, start, replies.clone(), stop),
                        None => return,
                    };
                    let tx = replies.clone();
                    self.exec.spawn(node, async move {
                        let _ = tx.send(reply).await;
                    });
                }
                Routed::RebuildSource { .. } => {
                    // Only probe sessions of peer replicas stream a rebuild;
                    // those run on rebuild links, never on target conns.
                    session.close();
                    run.conns.remove(&conn);
                    self.close_conn(conn);
                    return;
                }
            }
        }
    }

    /// An IO slot of `conn` is free.
    pub(super) fn replica_io_done(&mut self, host: u32, life: u64, conn: ConnId) {
        let Some(run) = running_mut(&mut self.replicas, host) else {
            return;
        };
        if run.life != life {
            return;
        }
        run.ios = run.ios.saturating_sub(1);
        if let Some(RConn::Open { in_flight, .. }) = run.conns.get_mut(&conn) {
            *in_flight = in_flight.saturating_sub(1);
        }
        self.pump_replica_conn(host, conn);
    }

    /// A replica's connection closed (its end learnt it).
    pub(super) fn replica_closed(&mut self, conn: ConnId) {
        let Some(host) = self.serving(conn) else {
            return;
        };
        let Some(run) = running_mut(&mut self.replicas, host) else {
            return;
        };
        if let Some(RConn::Open { session, stop, .. }) = run.conns.remove(&conn) {
            stop.cancel();
            session.close();
        }
    }

    fn replica_rebuild_io(&self, host: u32) -> Option<SimRebuildIo> {
        let r = self.replicas.get(host as usize)?;
        let run = r.running.as_ref()?;
        Some(SimRebuildIo {
            node: run.node,
            own_address: r.addr.to_string(),
            clock: self.clock.clone(),
            requests: Arc::clone(&self.requests),
        })
    }

    /// A sink dials its source: a rebuild link, served on the source by
    /// its session core and `rebuild::source::serve`.
    pub(super) fn rebuild_dial(&mut self, dial: crate::rebuild_io::Dial) {
        let from_host = self
            .replicas
            .iter()
            .find(|r| r.running.as_ref().is_some_and(|run| run.node == dial.from))
            .map(|r| r.host);
        let to = self
            .replicas
            .iter()
            .find(|r| r.addr.to_string() == dial.peer_address)
            .map(|r| r.host);
        let (Some(from_host), Some(to_host)) = (from_host, to) else {
            let _ = dial.answer.send(Err("no such replica".into()));
            return;
        };
        if self.net.is_cut(Host::Replica(from_host)) || self.net.is_cut(Host::Replica(to_host)) {
            let _ = dial.answer.send(Err("unreachable (partitioned)".into()));
            return;
        }
        let Some(io) = self.replica_rebuild_io(to_host) else {
            let _ = dial
                .answer
                .send(Err("connection refused (daemon down)".into()));
            return;
        };
        let Some(run) = self
            .replicas
            .get(to_host as usize)
            .and_then(|r| r.running.as_ref())
        else {
            return;
        };
        let Some(from_pool) = self
            .replicas
            .get(from_host as usize)
            .map(|r| r.pool_name.clone())
        else {
            return;
        };
        let (client, mut server, handle) = link_pair();
        self.rebuild_links.push((dial.from, run.node, handle));
        let registry = Arc::clone(&run.registry);
        let stop = run.stop.child_token();
        self.seq += 1;
        let conn_id = 1 << 40 | self.seq;
        self.exec.spawn(run.node, async move {
            use futures::{SinkExt, StreamExt};
            let Some(Ok(first)) = server.next().await else {
                return;
            };
            let peer = Peer::Authenticated(Identity::Replica { pool: from_pool });
            let session = match rcore::open(&registry, conn_id, peer, first).await {
                Opening::Open { session, reply } => {
                    if server.send(reply).await.is_err() {
                        return;
                    }
                    session
                }
                Opening::Refused { reply, .. } => {
                    let _ = server.send(reply).await;
                    return;
                }
            };
            while let Some(Ok(packet)) = server.next().await {
                match session.route(packet) {
                    Routed::Reply(Some(reply)) => {
                        if server.send(reply).await.is_err() {
                            break;
                        }
                    }
                    Routed::Reply(None) => {}
                    Routed::Io(task) => {
                        let reply = task.run().await;
                        if server.send(reply).await.is_err() {
                            break;
                        }
                    }
                    // A probe session never rebuilds itself (route gives
                    // the sink to owning sessions only).
                    Routed::RebuildSink { .. } => break,
                    Routed::RebuildSource { request, start } => {
                        let _ = cstor_replica::rebuild::source::serve(
                            &mut server,
                            &io,
                            session.entry(),
                            &request,
                            &start,
                            &stop,
                        )
                        .await;
                        break;
                    }
                }
            }
            session.close();
        });
        let _ = dial.answer.send(Ok(client));
    }
}

/// The pools' options: commits only on flush (no timer task), small chunks.
fn pool_options() -> PoolOptions {
    PoolOptions {
        chunk_bytes: CHUNK_BYTES,
        journal_bytes: Some(256 * 1024),
        max_data_bytes: None,
        commit_interval: None,
        block_checksums: true,
        checksum_cache_bytes: cstor_engine::limits::DEFAULT_CHECKSUM_CACHE_BYTES,
    }
}

/// The running daemon of `host`, if any.
fn running_mut(replicas: &mut [Replica], host: u32) -> Option<&mut Running> {
    replicas
        .get_mut(host as usize)
        .and_then(|r| r.running.as_mut())
}
