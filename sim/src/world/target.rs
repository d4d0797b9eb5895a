//! The target of a run: its iSCSI connections (login machine, session
//! core, logical unit), the volume's open (probes), the controller and the
//! driver's decisions, and one link per replica.
//!
//! The shell's channels are played with their order kept: the driver's
//! queue to a link and a link's events to the driver are FIFO hops of a
//! few hundred microseconds, so a driver can decide a packet for a
//! connection its link has already replaced — the link's generation gate
//! ([`carries`]) then drops it and reports it not sent, as in production.

use super::*;

/// Where the link → driver channel's next event may arrive (FIFO).
fn hop(rng: &mut Rng, now: u64, last: &mut u64) -> u64 {
    let at = (now + rng.range(1, HOP_MAX_US)).max(*last);
    *last = at;
    at
}

impl<'c> World<'c> {
    // ------------------------------------------------------------ lifecycle

    pub(super) fn start_target(&mut self) {
        self.instances += 1;
        let instance = self.instances;
        let node = self.node();
        self.target = Some(Target {
            instance,
            node,
            state: TargetState::Probing {
                probes: BTreeMap::new(),
                answers: BTreeMap::new(),
            },
            lu: None,
            gate: Rc::new(WriteGate::default()),
            size: Rc::new(std::cell::Cell::new(0)),
            sessions: BTreeMap::new(),
            performs: BTreeMap::new(),
            link_events_last: BTreeMap::new(),
            closed_conns: BTreeSet::new(),
            next_tsih: 1,
        });
        self.probe_round(instance);
    }

    /// Kills the target process: its tasks, connections and memory go.
    pub(super) fn crash_target(&mut self) {
        let Some(t) = self.target.take() else {
            return;
        };
        self.exec.kill(t.node);
        if let TargetState::Open(v) = &t.state {
            let unanswered: Vec<OperatorOp> = v.operator.values().cloned().collect();
            for op in unanswered {
                self.snapshot_in_doubt(Some(op));
            }
        }
        drop(t);
        for conn in self.net.conns_of(Host::Target) {
            self.close_conn(conn);
        }
        self.target_down_since = Some(self.now());
    }

    /// A snapshot create or destroy failed or went unanswered: some
    /// replicas may have taken it.
    fn snapshot_in_doubt(&mut self, op: Option<OperatorOp>) {
        match op {
            Some(OperatorOp::Snapshot { name, .. }) => {
                self.doubtful_snapshots.entry(name).or_insert(None);
            }
            Some(OperatorOp::DestroySnapshot { name }) => {
                if let Some(times) = self.snapshots.remove(&name) {
                    self.doubtful_snapshots.insert(name, Some(times));
                }
            }
            _ => {}
        }
    }

    fn instance(&self) -> Option<u64> {
        self.target.as_ref().map(|t| t.instance)
    }

    pub(super) fn open_volume(&mut self, instance: u64) -> Option<&mut OpenVolume> {
        let t = self.target.as_mut()?;
        if t.instance != instance {
            return None;
        }
        match &mut t.state {
            TargetState::Open(v) => Some(v),
            TargetState::Probing { .. } => None,
        }
    }

    // ---------------------------------------------------------------- open

    /// Probes every candidate not answered yet; opens once enough did
    /// (`membership::open_step`).
    pub(super) fn probe_round(&mut self, instance: u64) {
        if self.instance() != Some(instance) {
            return;
        }
        let decided = {
            let Some(TargetState::Probing { answers, .. }) = self.target.as_ref().map(|t| &t.state)
            else {
                return;
            };
            let records: BTreeMap<SocketAddr, Membership> = answers
                .iter()
                .map(|(a, p)| (*a, p.membership.clone()))
                .collect();
            membership::open_step(&self.cli, self.plan.cf, &records)
        };
        match decided {
            Ok(OpenStep::Open {
                members,
                cf,
                record,
            }) => self.open_target(instance, members, cf, record),
            Ok(OpenStep::Probe(addrs)) => {
                // A probe unanswered within the connect timeout is given up
                // (and made again).
                let now = self.now();
                let expired: Vec<ConnId> = match self.target.as_mut().map(|t| &mut t.state) {
                    Some(TargetState::Probing { probes, .. }) => {
                        let old: Vec<ConnId> = probes
                            .iter()
                            .filter(|(_, p)| now >= p.started + CONNECT_TIMEOUT_US)
                            .map(|(c, _)| *c)
                            .collect();
                        for c in &old {
                            probes.remove(c);
                        }
                        old
                    }
                    _ => Vec::new(),
                };
                for conn in expired {
                    self.close_conn(conn);
                }
                let in_flight: BTreeSet<SocketAddr> = match self.target.as_ref().map(|t| &t.state) {
                    Some(TargetState::Probing { probes, .. }) => {
                        probes.values().map(|p| p.addr).collect()
                    }
                    _ => BTreeSet::new(),
                };
                for addr in addrs.into_iter().filter(|a| !in_flight.contains(a)) {
                    let Some(host) = self
                        .replicas
                        .iter()
                        .find(|r| r.addr == addr)
                        .map(|r| r.host)
                    else {
                        continue;
                    };
                    let Some(conn) = self.dial(Host::Replica(host)) else {
                        continue;
                    };
                    let hello = Packet {
                        session_id: 0,
                        epoch: 0,
                        io_seq: 0,
                        message: Message::Hello(Hello {
                            versions: VersionRange::SUPPORTED,
                            volume: volume_name(),
                            next_io_seq: 0,
                            auth: cstor_proto::Auth::None,
                        }),
                    };
                    if let Some(TargetState::Probing { probes, .. }) =
                        self.target.as_mut().map(|t| &mut t.state)
                    {
                        probes.insert(
                            conn,
                            Probe {
                                addr,
                                ack: None,
                                status: None,
                                started: now,
                            },
                        );
                    }
                    self.send_frame(conn, End::Server, hello);
                }
                self.schedule(1_000_000, Ev::Probe { instance });
            }
            Err(e) => self.fail(format!("opening the volume: {e}")),
        }
    }

    /// A TCP connection from the target (`None`: refused or cut off).
    fn dial(&mut self, to: Host) -> Option<ConnId> {
        let up = match to {
            Host::Replica(h) => self
                .replicas
                .get(h as usize)
                .is_some_and(|r| r.running.is_some()),
            _ => true,
        };
        if !up {
            return None;
        }
        self.net.connect(Host::Target, to)
    }

    /// Sends a replication frame on `conn` towards `to`.
    pub(super) fn send_frame(&mut self, conn: ConnId, to: End, packet: Packet) {
        let now = self.now();
        if let Some(at) = self.net.send(&mut self.rng, now, conn, to) {
            self.schedule_at(at, Ev::Frame { conn, to, packet });
        }
    }

    fn probe_frame(&mut self, conn: ConnId, packet: Packet) {
        let instance = self.instance().unwrap_or(0);
        let mut next: Option<Message> = None;
        let mut done: Option<(SocketAddr, Probed)> = None;
        let mut close = false;
        if let Some(TargetState::Probing {
            probes, answers, ..
        }) = self.target.as_mut().map(|t| &mut t.state)
        {
            let Some(p) = probes.get_mut(&conn) else {
                return;
            };
            match packet.message {
                Message::HelloAck(ack) => {
                    p.ack = Some(ack);
                    next = Some(Message::Status);
                }
                Message::StatusReport(status) => {
                    p.status = Some(status);
                    next = Some(Message::MembershipGet);
                }
                Message::Membership(membership) => {
                    if let (Some(ack), Some(status)) = (p.ack, p.status) {
                        done = Some((
                            p.addr,
                            Probed {
                                ack,
                                status,
                                membership,
                            },
                        ));
                    }
                    close = true;
                }
                _ => close = true,
            }
            if close {
                probes.remove(&conn);
            }
            if let Some((addr, probed)) = done.take() {
                answers.insert(addr, probed);
                // Decide at once: enough may have answered.
                self.close_conn(conn);
                self.probe_round(instance);
                return;
            }
        }
        if close {
            self.close_conn(conn);
        }
        if let Some(message) = next {
            let request = Packet {
                session_id: 0,
                epoch: 0,
                io_seq: 0,
                message,
            };
            self.send_frame(conn, End::Server, request);
        }
    }

    /// Opens the volume from the probes' answers, as `Volume::open` does.
    fn open_target(
        &mut self,
        instance: u64,
        members: Vec<SocketAddr>,
        cf: usize,
        record: Option<Membership>,
    ) {
        let (probe_conns, answers) = {
            let Some(t) = self.target.as_mut() else {
                return;
            };
            let TargetState::Probing {
                probes, answers, ..
            } = &mut t.state
            else {
                return;
            };
            let conns: Vec<ConnId> = probes.keys().copied().collect();
            (conns, std::mem::take(answers))
        };
        let plan = match plan_open(&members, cf, record, &answers) {
            Ok(plan) => plan,
            Err(e) => {
                self.fail(format!("open: {e}"));
                return;
            }
        };
        let session_id = self.rng.next_u64() | 1;
        let (epoch, size_bytes, max_received) = (plan.epoch, plan.size_bytes, plan.max_received);
        let controller = plan.controller(session_id, ACK_TIMEOUT, HOLD, self.instant());
        let OpenPlan {
            replica_ids,
            record,
            write_record,
            generation,
            ..
        } = plan;
        let mut roster = Roster::new(record.clone(), generation);
        let mut links = Vec::new();
        for (addr, id) in members.iter().zip(&replica_ids) {
            roster.push(*addr, *id);
            let host = self
                .replicas
                .iter()
                .find(|r| r.addr == *addr)
                .map_or(u32::MAX, |r| r.host);
            links.push(new_link(host));
        }
        let lu = match LogicalUnit::new(LuConfig {
            identity: cstor_target::server::identity(VOLUME),
            blocks: size_bytes / BLOCK as u64,
            block_size: BlockSize::B4096,
            physical_block_exponent: 0,
            unmap_granularity_blocks: CHUNK_BYTES / BLOCK as u32,
            write_cache: true,
        }) {
            Ok(lu) => lu,
            Err(e) => {
                self.fail(format!("logical unit: {e}"));
                return;
            }
        };
        let n = links.len();
        let Some(t) = self.target.as_mut() else {
            return;
        };
        t.lu = Some(lu);
        t.size.set(size_bytes);
        t.state = TargetState::Open(Box::new(OpenVolume {
            controller,
            roster,
            session_id,
            epoch,
            first_io_seq: max_received.saturating_add(IO_SEQ_MARGIN),
            links,
            waiters: BTreeMap::new(),
            changes: BTreeMap::new(),
            operator: BTreeMap::new(),
            next_tag: 1,
            claimed: BTreeSet::new(),
            fenced: false,
        }));
        for conn in probe_conns {
            self.close_conn(conn);
        }
        for replica in 0..n {
            self.schedule(0, Ev::Dial { instance, replica });
        }
        self.schedule(TICK.as_micros() as u64, Ev::Tick { instance });
        if write_record {
            let cf_now = cf;
            let tag = self.take_tag(instance);
            let now = self.instant();
            if let Some(v) = self.open_volume(instance) {
                let planned = PlannedChange {
                    record: v.roster.record.clone(),
                    change: MemberChange::None,
                    new_cf: cf_now,
                    added: None,
                };
                v.roster.note_sent(&planned.record);
                let op = Op::SetMembership {
                    record: planned.record.clone(),
                    change: planned.change,
                    new_cf: planned.new_cf,
                };
                v.changes.insert(tag, planned);
                v.operator.insert(tag, OperatorOp::FirstRecord);
                let actions = v.controller.submit(now, tag, op);
                self.perform(instance, actions);
            }
        }
    }

    pub(super) fn take_tag(&mut self, instance: u64) -> Tag {
        match self.open_volume(instance) {
            Some(v) => {
                let tag = v.next_tag;
                v.next_tag += 1;
                tag
            }
            None => 0,
        }
    }

    // --------------------------------------------------------------- links

    pub(super) fn link_dial(&mut self, instance: u64, replica: usize) {
        let now = self.now();
        let (host, session_id, epoch, first_io_seq) = {
            let Some(v) = self.open_volume(instance) else {
                return;
            };
            let first = v.first_io_seq;
            let (sid, ep) = (v.session_id, v.epoch);
            let Some(l) = v.links.get_mut(replica) else {
                return;
            };
            l.dial_scheduled = false;
            if l.stopped || !matches!(l.state, LinkState::Idle) {
                return;
            }
            if now < l.not_before {
                let wait = l.not_before - now;
                l.dial_scheduled = true;
                self.schedule(wait, Ev::Dial { instance, replica });
                return;
            }
            (l.host, sid, ep, first)
        };
        let Some(conn) = self.dial(Host::Replica(host)) else {
            // Refused or unreachable: the link reports Down and retries.
            self.link_failed(instance, replica, None);
            return;
        };
        if let Some(l) = self
            .open_volume(instance)
            .and_then(|v| v.links.get_mut(replica))
        {
            l.state = LinkState::Claiming {
                conn,
                ack: None,
                status: None,
            };
        }
        // The claim must finish within the link's connect timeout.
        self.schedule(
            CONNECT_TIMEOUT_US,
            Ev::ClaimTimeout {
                instance,
                replica,
                conn,
            },
        );
        let hello = Packet {
            session_id,
            epoch,
            io_seq: 0,
            message: Message::Hello(Hello {
                versions: VersionRange::SUPPORTED,
                volume: volume_name(),
                next_io_seq: first_io_seq,
                auth: cstor_proto::Auth::None,
            }),
        };
        self.send_frame(conn, End::Server, hello);
    }

    /// The link of `replica` lost its connection (or could not make one):
    /// it reports `Down` (FIFO with its other events) and dials again after
    /// its backoff.
    fn link_failed(&mut self, instance: u64, replica: usize, conn: Option<ConnId>) {
        let now = self.now();
        let mut events_last = self.link_events_last(instance, replica);
        let Some(v) = self.open_volume(instance) else {
            return;
        };
        let Some(l) = v.links.get_mut(replica) else {
            return;
        };
        let generation = l.generation;
        l.state = LinkState::Idle;
        let backoff = l.backoff_us;
        l.backoff_us = (l.backoff_us * 2).min(BACKOFF_MAX_US);
        let stopped = l.stopped;
        let schedule_dial = !l.dial_scheduled && !stopped;
        if schedule_dial {
            l.dial_scheduled = true;
        }
        if let Some(conn) = conn {
            self.close_conn(conn);
        }
        let at = hop(&mut self.rng, now, &mut events_last);
        self.set_link_events_last(instance, replica, events_last);
        self.schedule_at(
            at,
            Ev::LinkDown {
                instance,
                replica,
                generation,
            },
        );
        if schedule_dial {
            self.schedule(backoff, Ev::Dial { instance, replica });
        }
    }

    fn link_events_last(&self, instance: u64, replica: usize) -> u64 {
        self.target
            .as_ref()
            .filter(|t| t.instance == instance)
            .and_then(|t| t.link_events_last.get(&replica).copied())
            .unwrap_or(0)
    }

    fn set_link_events_last(&mut self, instance: u64, replica: usize, at: u64) {
        if let Some(t) = self.target.as_mut().filter(|t| t.instance == instance) {
            t.link_events_last.insert(replica, at);
        }
    }

    /// Which link of the open target owns `conn`.
    fn link_of(&self, conn: ConnId) -> Option<(u64, usize)> {
        let t = self.target.as_ref()?;
        let TargetState::Open(v) = &t.state else {
            return None;
        };
        v.links
            .iter()
            .position(|l| match l.state {
                LinkState::Claiming { conn: c, .. } | LinkState::Up { conn: c } => c == conn,
                LinkState::Idle => false,
            })
            .map(|i| (t.instance, i))
    }

    /// A frame reaches the target (a link's or a probe's).
    pub(super) fn target_frame(&mut self, conn: ConnId, packet: Packet) {
        if let Some(TargetState::Probing { .. }) = self.target.as_ref().map(|t| &t.state) {
            self.probe_frame(conn, packet);
            return;
        }
        let Some((instance, replica)) = self.link_of(conn) else {
            return;
        };
        let now = self.now();
        let (session_id, epoch) = match self.open_volume(instance) {
            Some(v) => (v.session_id, v.epoch),
            None => return,
        };
        let Some(l) = self
            .open_volume(instance)
            .and_then(|v| v.links.get_mut(replica))
        else {
            return;
        };
        match &mut l.state {
            LinkState::Up { .. } => {
                if packet.message == Message::Ack(cstor_proto::Opcode::Heartbeat) {
                    return;
                }
                let generation = l.generation;
                let mut last = self.link_events_last(instance, replica);
                let at = hop(&mut self.rng, now, &mut last);
                self.set_link_events_last(instance, replica, last);
                self.schedule_at(
                    at,
                    Ev::LinkReply {
                        instance,
                        replica,
                        generation,
                        packet,
                    },
                );
            }
            LinkState::Claiming { ack, status, .. } => match packet.message {
                Message::HelloAck(a) => {
                    *ack = Some(Box::new(a));
                    let request = Packet {
                        session_id,
                        epoch,
                        io_seq: 0,
                        message: Message::Status,
                    };
                    self.send_frame(conn, End::Server, request);
                }
                Message::StatusReport(s) => {
                    *status = Some(Box::new(s));
                    let request = Packet {
                        session_id,
                        epoch,
                        io_seq: 0,
                        message: Message::MembershipGet,
                    };
                    self.send_frame(conn, End::Server, request);
                }
                Message::Membership(membership) => {
                    let (Some(ack), Some(status)) = (ack.take(), status.take()) else {
                        self.link_failed(instance, replica, Some(conn));
                        return;
                    };
                    l.generation += 1;
                    l.backoff_us = BACKOFF_MIN_US;
                    l.state = LinkState::Up { conn };
                    let generation = l.generation;
                    let mut last = self.link_events_last(instance, replica);
                    let at = hop(&mut self.rng, now, &mut last);
                    self.set_link_events_last(instance, replica, last);
                    self.schedule_at(
                        at,
                        Ev::LinkUp {
                            instance,
                            replica,
                            generation,
                            ack,
                            status,
                            membership: Box::new(membership),
                        },
                    );
                }
                Message::Error(e) if e.status == Status::StaleEpoch => {
                    self.close_conn(conn);
                    if let Some(l) = self
                        .open_volume(instance)
                        .and_then(|v| v.links.get_mut(replica))
                    {
                        l.state = LinkState::Idle;
                        l.stopped = true;
                    }
                    self.schedule(1, Ev::Fenced { instance });
                }
                _ => self.link_failed(instance, replica, Some(conn)),
            },
            LinkState::Idle => {}
        }
    }

    /// A claim still unanswered after the connect timeout fails the dial.
    pub(super) fn claim_timeout(&mut self, instance: u64, replica: usize, conn: ConnId) {
        let stuck = self
            .open_volume(instance)
            .and_then(|v| v.links.get(replica))
            .is_some_and(|l| matches!(l.state, LinkState::Claiming { conn: c, .. } if c == conn));
        if stuck {
            self.link_failed(instance, replica, Some(conn));
        }
    }

    /// A packet the driver queued reaches its link: sent only on the
    /// connection it was decided for (`carries`).
    pub(super) fn link_command(
        &mut self,
        instance: u64,
        replica: usize,
        generation: u64,
        packet: Packet,
    ) {
        let now = self.now();
        let Some(l) = self
            .open_volume(instance)
            .and_then(|v| v.links.get(replica))
        else {
            return;
        };
        let target = match l.state {
            LinkState::Up { conn } if carries(l.generation, generation) => Some(conn),
            _ => None,
        };
        match target {
            Some(conn) => self.send_frame(conn, End::Server, packet),
            None => {
                let io_seq = packet.io_seq;
                let mut last = self.link_events_last(instance, replica);
                let at = hop(&mut self.rng, now, &mut last);
                self.set_link_events_last(instance, replica, last);
                self.schedule_at(
                    at,
                    Ev::NotSent {
                        instance,
                        replica,
                        generation,
                        io_seq,
                    },
                );
            }
        }
    }

    // -------------------------------------------------------------- driver

    /// Feeds the controller an event and carries out its actions.
    pub(super) fn driver_event(
        &mut self,
        instance: u64,
        f: impl FnOnce(&mut Controller, Instant) -> Vec<Action>,
    ) {
        let now = self.instant();
        let Some(v) = self.open_volume(instance) else {
            return;
        };
        let actions = f(&mut v.controller, now);
        self.perform(instance, actions);
    }

    pub(super) fn driver_link_up(
        &mut self,
        instance: u64,
        replica: usize,
        generation: u64,
        ack: &HelloAck,
        status: &StatusReport,
        membership: &Membership,
    ) {
        let now = self.instant();
        let up = LinkUp {
            replica,
            generation,
            ack,
            status,
            membership,
        };
        let verbose = self.opts.verbose;
        let Some(v) = self.open_volume(instance) else {
            return;
        };
        let actions = glue::on_link_up(&mut v.controller, &mut v.roster, now, up, 0);
        if verbose {
            eprintln!(
                "             link {replica} up: states {:?} missed_from {:?}",
                v.controller.replica_states(),
                (0..v.links.len())
                    .map(|i| v.controller.missed_from(i))
                    .collect::<Vec<_>>()
            );
        }
        v.claimed.insert(replica);
        self.perform(instance, actions);
        self.resolve_ambiguous();
    }

    /// Carries out the controller's actions, as the driver's `perform`.
    pub(super) fn perform(&mut self, instance: u64, actions: Vec<Action>) {
        let now = self.now();
        let mut completions = Vec::new();
        for action in actions {
            match action {
                Action::Send {
                    replica,
                    generation,
                    packet,
                } => self.queue_to_link(instance, replica, generation, packet),
                Action::Complete { tag, result } => completions.push((tag, result)),
                Action::Drop {
                    replica,
                    generation,
                    redial_after,
                    ..
                } => {
                    let conn = match self
                        .open_volume(instance)
                        .and_then(|v| v.links.get_mut(replica))
                    {
                        Some(l) => {
                            l.not_before = l.not_before.max(now + redial_after.as_micros() as u64);
                            match l.state {
                                LinkState::Up { conn } if l.generation == generation => Some(conn),
                                _ => None,
                            }
                        }
                        None => None,
                    };
                    if let Some(conn) = conn {
                        self.link_failed(instance, replica, Some(conn));
                    }
                }
                Action::StartRebuild {
                    replica,
                    generation,
                    source,
                    from_io_seq,
                    first_live_io_seq,
                } => {
                    let packet = self.open_volume(instance).and_then(|v| {
                        let addr = v.roster.addrs.get(source)?.to_string();
                        glue::rebuild_start_packet(
                            v.session_id,
                            v.epoch,
                            VOLUME,
                            addr,
                            from_io_seq,
                            first_live_io_seq,
                        )
                    });
                    if let Some(packet) = packet {
                        self.queue_to_link(instance, replica, generation, packet);
                    }
                }
            }
        }
        for (tag, result) in completions {
            self.complete(instance, tag, result);
        }
        self.follow_volume();
    }

    fn queue_to_link(&mut self, instance: u64, replica: usize, generation: u64, packet: Packet) {
        let now = self.now();
        let Some(l) = self
            .open_volume(instance)
            .and_then(|v| v.links.get_mut(replica))
        else {
            return;
        };
        let mut last = l.last_command;
        let base = if now < l.lag_until {
            now + l.lag_us
        } else {
            now
        };
        let at = hop(&mut self.rng, base, &mut last);
        if let Some(l) = self
            .open_volume(instance)
            .and_then(|v| v.links.get_mut(replica))
        {
            l.last_command = last;
        }
        self.schedule_at(
            at,
            Ev::LinkCommand {
                instance,
                replica,
                generation,
                packet,
            },
        );
    }

    fn complete(&mut self, instance: u64, tag: Tag, result: Result<Completion, VolumeError>) {
        if self.opts.verbose {
            let text = format!("{result:?}");
            let cut: String = text.chars().take(100).collect();
            eprintln!("{:>12}   complete tag {tag}: {cut}", self.now());
        }
        let Some(v) = self.open_volume(instance) else {
            return;
        };
        if let Some(waiter) = v.waiters.remove(&tag) {
            let _ = waiter.send(result);
            return;
        }
        let op = v.operator.remove(&tag);
        if let Some(
            scrub @ (OperatorOp::ScrubDigest { .. }
            | OperatorOp::ScrubRead { .. }
            | OperatorOp::ScrubRepair),
        ) = op
        {
            self.scrub_step(scrub, result);
            return;
        }
        let change = v.changes.remove(&tag);
        let ok = result.is_ok();
        if let (Some(change), true) = (change, ok) {
            v.roster.commit(change.record.clone());
            match (change.change, change.added) {
                (MemberChange::Add, Some((addr, id))) => {
                    v.roster.push(addr, Some(id));
                    let host = self
                        .replicas
                        .iter()
                        .find(|r| r.addr == addr)
                        .map_or(u32::MAX, |r| r.host);
                    let Some(v) = self.open_volume(instance) else {
                        return;
                    };
                    v.links.push(new_link(host));
                    let replica = v.links.len() - 1;
                    self.schedule(0, Ev::Dial { instance, replica });
                }
                (MemberChange::Remove(index), _) => {
                    let conn = self.open_volume(instance).and_then(|v| {
                        let l = v.links.get_mut(index)?;
                        l.stopped = true;
                        match std::mem::replace(&mut l.state, LinkState::Idle) {
                            LinkState::Up { conn } | LinkState::Claiming { conn, .. } => Some(conn),
                            LinkState::Idle => None,
                        }
                    });
                    if let Some(conn) = conn {
                        self.close_conn(conn);
                    }
                }
                _ => {}
            }
        }
        match op {
            Some(OperatorOp::Snapshot { name, submitted }) if ok => {
                let taken = self.now();
                self.snapshots.insert(name, (submitted, taken));
            }
            Some(OperatorOp::DestroySnapshot { name }) if ok => {
                self.snapshots.remove(&name);
                self.doubtful_snapshots.remove(&name);
            }
            Some(OperatorOp::Snapshot { .. } | OperatorOp::DestroySnapshot { .. }) => {
                self.snapshot_in_doubt(op);
            }
            Some(OperatorOp::Membership {
                retiring: Some(host),
            }) if ok => {
                if let Some(r) = self.replicas.get_mut(host as usize) {
                    r.retired = true;
                }
                self.crash_replica(host, false, false);
            }
            _ => {}
        }
    }

    /// A scrub step answered (`Options::scrub`): the healthy replicas'
    /// digests must agree; then the range is read from one of them and
    /// written back, guarded by the digest, as the target's scrub repairs
    /// (the block oracle then catches a repair that lands over a newer
    /// write).
    fn scrub_step(&mut self, step: OperatorOp, result: Result<Completion, VolumeError>) {
        let Some(instance) = self.instance() else {
            return;
        };
        match (step, result) {
            (
                OperatorOp::ScrubDigest { offset },
                Ok(Completion::Digests {
                    io_seq, replies, ..
                }),
            ) => {
                let Some(v) = self.open_volume(instance) else {
                    return;
                };
                let states = v.controller.replica_states();
                let healthy: Vec<(usize, u64)> = replies
                    .iter()
                    .filter(|(r, _)| states.get(*r) == Some(&ReplicaState::Healthy))
                    .map(|(r, d)| (*r, d.digest))
                    .collect();
                if healthy.windows(2).any(|w| w[0].1 != w[1].1) {
                    self.fail(format!(
                        "scrub: healthy replicas digest a range differently (io_seq {io_seq}): {healthy:?}"
                    ));
                    return;
                }
                let Some(&(source, _)) = healthy.first() else {
                    return;
                };
                if self.submit_operator(
                    Op::ReadFrom {
                        replica: source,
                        offset,
                        len_bytes: SCRUB_SIM_RANGE as u32,
                    },
                    OperatorOp::ScrubRead {
                        guard: io_seq,
                        offset,
                    },
                ) {
                    self.count_operator("scrub_read");
                }
            }
            (OperatorOp::ScrubRead { guard, offset }, Ok(Completion::Data(data)))
                if self.submit_operator(
                    Op::Repair {
                        offset,
                        data: data.clone(),
                        guard,
                    },
                    OperatorOp::ScrubRepair,
                ) =>
            {
                self.count_operator("scrub_repair");
            }
            _ => {}
        }
    }

    /// The logical unit follows the volume (size, read-only), as the
    /// server's status feed does.
    pub(super) fn follow_volume(&mut self) {
        let now = self.instant();
        let Some(t) = self.target.as_mut() else {
            return;
        };
        let TargetState::Open(v) = &t.state else {
            return;
        };
        let size = v.controller.size_bytes();
        let state = VolumeState {
            blocks: size / BLOCK as u64,
            read_only: v.controller.is_read_only(now),
        };
        t.size.set(size);
        if let Some(lu) = t.lu.as_mut() {
            lu.follow_volume(state);
        }
    }

    // ---------------------------------------------------------------- iSCSI

    /// A PDU reaches the target.
    pub(super) fn target_pdu(&mut self, conn: ConnId, pdu: Pdu) {
        let cfg = self.cfg;
        let Some(t) = self.target.as_mut() else {
            return;
        };
        if !t.sessions.contains_key(&conn) {
            let tsih = std::num::NonZeroU16::new(t.next_tsih).unwrap_or(std::num::NonZeroU16::MIN);
            t.next_tsih = t.next_tsih.wrapping_add(1).max(1);
            let local = SocketAddr::from(([10, 0, 0, 1], 3260));
            t.sessions.insert(
                conn,
                ISession {
                    login: Some(LoginMachine::new(cfg, tsih, local)),
                    ff: None,
                    nexus: None,
                },
            );
        }
        let Some(s) = t.sessions.get_mut(&conn) else {
            return;
        };
        if let Some(machine) = s.login.as_mut() {
            let Pdu::LoginRequest(request) = pdu else {
                self.close_conn(conn);
                return;
            };
            match machine.on_request(&request) {
                LoginAction::Continue(response) => {
                    self.send_pdu(conn, Pdu::LoginResponse(response));
                }
                LoginAction::Fail(response, _) => {
                    self.send_pdu(conn, Pdu::LoginResponse(response));
                    self.close_conn(conn);
                }
                LoginAction::Complete(response, session) => {
                    let nexus =
                        Nexus::iscsi(&session.initiator_name, session.isid, cfg.portal_group_tag);
                    if let Some(s) = self.target.as_mut().and_then(|t| t.sessions.get_mut(&conn)) {
                        s.login = None;
                        s.ff = Some(FullFeature::new(cfg, *session));
                        s.nexus = Some(nexus);
                    }
                    self.send_pdu(conn, Pdu::LoginResponse(response));
                }
            }
            return;
        }
        let actions = match s.ff.as_mut() {
            Some(ff) => ff.on_pdu(pdu),
            None => return,
        };
        self.iscsi_actions(conn, actions);
    }

    fn send_pdu(&mut self, conn: ConnId, pdu: Pdu) {
        let now = self.now();
        if let Some(at) = self.net.send(&mut self.rng, now, conn, End::Client) {
            self.schedule_at(
                at,
                Ev::Pdu {
                    conn,
                    to: End::Client,
                    pdu,
                },
            );
        }
    }

    /// Carries out the session core's actions for connection `conn`.
    fn iscsi_actions(&mut self, conn: ConnId, actions: Vec<IscsiAction>) {
        let mut queue: VecDeque<IscsiAction> = actions.into();
        let mut close = false;
        while let Some(action) = queue.pop_front() {
            match action {
                IscsiAction::Send(pdu) => {
                    let data_in = match &pdu {
                        Pdu::DataIn(d) => d.data.len(),
                        _ => 0,
                    };
                    self.send_pdu(conn, pdu);
                    if data_in > 0 {
                        if let Some(ff) = self.ff(conn) {
                            queue.extend(ff.data_in_sent(data_in));
                        }
                    }
                }
                IscsiAction::Execute(task) => {
                    let Some(t) = self.target.as_mut() else {
                        return;
                    };
                    let (Some(lu), Some(s)) = (t.lu.as_mut(), t.sessions.get_mut(&conn)) else {
                        return;
                    };
                    let Some(nexus) = s.nexus.as_ref() else {
                        return;
                    };
                    let (started, _refused) = task::start(lu, nexus, task);
                    match started {
                        Started::Done(id, result) => {
                            if let Some(ff) = s.ff.as_mut() {
                                queue.extend(ff.complete(id, result));
                            }
                        }
                        Started::Io(io) => self.start_perform(conn, io),
                    }
                }
                IscsiAction::Reset { kind, lun } => {
                    if let Some(lu) = self.target.as_mut().and_then(|t| t.lu.as_mut()) {
                        task::reset(lu, kind, lun);
                    }
                }
                IscsiAction::Close => close = true,
            }
        }
        self.budget_freed();
        if close {
            self.end_session(conn);
            self.close_conn(conn);
        }
    }

    fn ff(&mut self, conn: ConnId) -> Option<&mut FullFeature<'c>> {
        self.target.as_mut()?.sessions.get_mut(&conn)?.ff.as_mut()
    }

    /// Runs a task's block request as a task of the target.
    fn start_perform(&mut self, conn: ConnId, io: TaskIo) {
        let perform = self.next_perform;
        self.next_perform += 1;
        let outbox = Rc::clone(&self.outbox);
        let Some(t) = self.target.as_mut() else {
            return;
        };
        t.performs.insert(perform, conn);
        let volume = SimVolume {
            instance: t.instance,
            outbox: Rc::clone(&outbox),
            size_bytes: Rc::clone(&t.size),
        };
        let gate = Rc::clone(&t.gate);
        let instance = t.instance;
        self.exec.spawn(t.node, async move {
            let result = block_perform(&volume, &gate, BLOCK as u32, io.pending.request()).await;
            outbox.borrow_mut().push(Out::Performed {
                instance,
                conn,
                perform,
                io,
                result,
            });
        });
    }

    /// A block request finished: the unit and the session core answer it.
    fn performed(
        &mut self,
        instance: u64,
        conn: ConnId,
        perform: u64,
        io: TaskIo,
        result: IoResult,
    ) {
        let Some(t) = self.target.as_mut().filter(|t| t.instance == instance) else {
            return;
        };
        t.performs.remove(&perform);
        let actions = match (
            t.lu.as_mut(),
            t.sessions.get_mut(&conn).and_then(|s| s.ff.as_mut()),
        ) {
            (Some(lu), Some(ff)) => task::finish(lu, ff, io, result),
            // The connection (or the unit) is gone: nobody to answer.
            _ => Vec::new(),
        };
        self.iscsi_actions(conn, actions);
        self.resolve_ambiguous();
    }

    /// Budget was given back: every session waiting for it retries.
    fn budget_freed(&mut self) {
        let conns: Vec<ConnId> = match self.target.as_ref() {
            Some(t) => t
                .sessions
                .iter()
                .filter(|(_, s)| s.ff.as_ref().is_some_and(|ff| ff.waits_for_target_budget()))
                .map(|(c, _)| *c)
                .collect(),
            None => return,
        };
        for conn in conns {
            let actions = match self.ff(conn) {
                Some(ff) => ff.budget_freed(),
                None => continue,
            };
            if !actions.is_empty() {
                self.iscsi_actions(conn, actions);
            }
        }
    }

    /// An iSCSI connection ended at the target: its session core goes (its
    /// budget with it), the unit loses the nexus.
    fn end_session(&mut self, conn: ConnId) {
        if self.opts.verbose {
            eprintln!("{:>12}   end_session {conn}", self.now());
        }
        let Some(t) = self.target.as_mut() else {
            return;
        };
        t.closed_conns.insert(conn);
        if let Some(s) = t.sessions.remove(&conn) {
            if let (Some(lu), Some(nexus)) = (t.lu.as_mut(), s.nexus.as_ref()) {
                lu.nexus_lost(nexus);
            }
        }
        self.budget_freed();
        self.resolve_ambiguous();
    }

    /// Carries out what a task asked of the scheduler.
    pub(super) fn carry_out(&mut self, out: Out) {
        match out {
            Out::Frame { conn, packet } => self.send_frame(conn, End::Client, packet),
            Out::Opened {
                host,
                life,
                conn,
                opening,
            } => self.replica_opened(host, life, conn, opening),
            Out::IoDone { host, life, conn } => self.replica_io_done(host, life, conn),
            Out::Performed {
                instance,
                conn,
                perform,
                io,
                result,
            } => self.performed(instance, conn, perform, io, result),
            Out::Submit {
                instance,
                op,
                reply,
            } => {
                let now = self.instant();
                let tag = self.take_tag(instance);
                let Some(v) = self.open_volume(instance) else {
                    let _ = reply.send(Err(VolumeError::Unavailable));
                    return;
                };
                v.waiters.insert(tag, reply);
                let actions = v.controller.submit(now, tag, op);
                self.perform(instance, actions);
            }
        }
    }

    /// `end` of `conn` learnt that the connection closed.
    pub(super) fn closed(&mut self, conn: ConnId, end: End) {
        let server = self.net.host(conn, End::Server);
        match (server, end) {
            (Some(Host::Target), End::Server) => self.end_session(conn),
            (Some(Host::Target), End::Client) => self.initiator_closed(conn),
            (Some(Host::Replica(_)), End::Server) => self.replica_closed(conn),
            (Some(Host::Replica(_)), End::Client) => {
                if let Some((instance, replica)) = self.link_of(conn) {
                    self.link_failed(instance, replica, None);
                } else if let Some(TargetState::Probing { probes, .. }) =
                    self.target.as_mut().map(|t| &mut t.state)
                {
                    probes.remove(&conn);
                }
            }
            _ => {}
        }
        self.net.learnt_close(conn, end);
    }

    /// An operator request to the open volume.
    pub(super) fn submit_operator(&mut self, op: Op, what: OperatorOp) -> bool {
        let Some(instance) = self.instance() else {
            return false;
        };
        let now = self.instant();
        let tag = self.take_tag(instance);
        let Some(v) = self.open_volume(instance) else {
            return false;
        };
        v.operator.insert(tag, what);
        let actions = v.controller.submit(now, tag, op);
        self.perform(instance, actions);
        true
    }

    /// A membership change through the driver's rules.
    pub(super) fn submit_change(
        &mut self,
        change: membership::Change,
        retiring: Option<u32>,
    ) -> bool {
        let Some(instance) = self.instance() else {
            return false;
        };
        let now = self.instant();
        let tag = self.take_tag(instance);
        let Some(v) = self.open_volume(instance) else {
            return false;
        };
        let states = v.controller.replica_states();
        let Ok(planned) = glue::plan_change(&v.roster, &states, &change) else {
            return false;
        };
        v.roster.note_sent(&planned.record);
        let op = Op::SetMembership {
            record: planned.record.clone(),
            change: planned.change,
            new_cf: planned.new_cf,
        };
        v.changes.insert(tag, planned);
        v.operator.insert(tag, OperatorOp::Membership { retiring });
        let actions = v.controller.submit(now, tag, op);
        self.perform(instance, actions);
        true
    }

    /// The open volume's replica states, addresses (by index) and CF.
    pub(super) fn volume_view(&self) -> Option<(Vec<ReplicaState>, Vec<SocketAddr>, usize, bool)> {
        let t = self.target.as_ref()?;
        let TargetState::Open(v) = &t.state else {
            return None;
        };
        Some((
            v.controller.replica_states(),
            v.roster.addrs.clone(),
            v.controller.config().cf,
            v.controller.barrier_in_progress() || !v.changes.is_empty(),
        ))
    }

    /// Does a linked replica still owe an answer to a mutating request
    /// (sent, or on its way: its content is not final yet)?
    pub(super) fn replicas_owe(&self) -> bool {
        let Some(t) = self.target.as_ref() else {
            return false;
        };
        let TargetState::Open(v) = &t.state else {
            return false;
        };
        let states = v.controller.replica_states();
        (0..states.len()).any(|i| states[i].is_linked() && v.controller.owed_by(i) > 0)
    }

    /// Is the target's volume open and every member claimed since?
    pub(super) fn target_settled(&self) -> bool {
        let Some(t) = self.target.as_ref() else {
            return false;
        };
        let TargetState::Open(v) = &t.state else {
            return false;
        };
        v.links
            .iter()
            .enumerate()
            .all(|(i, l)| l.stopped || v.claimed.contains(&i))
    }

    /// Block requests running on the target, and the next id.
    pub(super) fn performs_running(&self) -> Option<u64> {
        self.target.as_ref()?.performs.keys().next().copied()
    }

    pub(super) fn target_saw_close(&self, conn: ConnId) -> bool {
        self.target
            .as_ref()
            .is_none_or(|t| t.closed_conns.contains(&conn) || !t.sessions.contains_key(&conn))
    }
}

fn new_link(host: u32) -> Link {
    Link {
        host,
        state: LinkState::Idle,
        generation: 0,
        backoff_us: BACKOFF_MIN_US,
        not_before: 0,
        stopped: false,
        dial_scheduled: true,
        last_command: 0,
        lag_us: 0,
        lag_until: 0,
    }
}

/// The volume's name on the wire (a valid name: checked by a test).
pub(super) fn volume_name() -> Name {
    match Name::new(VOLUME.to_string()) {
        Ok(n) => n,
        Err(_) => unreachable_name(),
    }
}

#[allow(clippy::panic)]
fn unreachable_name() -> Name {
    panic!("{VOLUME} is not a valid volume name")
}
