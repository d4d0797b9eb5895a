//! The initiators' workload and the oracles that judge every answer.

use super::*;

/// Percent weights of the workload's commands.
const MIX: &[(&str, u64)] = &[
    ("read", 34),
    ("write", 30),
    ("write_fua", 6),
    ("sync", 5),
    ("unmap", 4),
    ("write_same", 4),
    ("write_zeroes", 2),
    ("compare_and_write", 5),
    ("abort_task", 5),
    ("lun_reset", 1),
    ("relogin", 1),
    ("drop_connection", 1),
];

/// A replica's snapshots: name → content.
type Snapshots = BTreeMap<String, Vec<u8>>;

impl World<'_> {
    /// The volume's size in blocks as the initiators see it.
    fn lu_blocks(&self) -> u64 {
        self.target
            .as_ref()
            .and_then(|t| t.lu.as_ref())
            .map_or(self.plan.volume_bytes / BLOCK as u64, |lu| {
                lu.geometry().blocks
            })
    }

    /// An initiator's next step: log in, or issue one command.
    pub(super) fn work(&mut self, i: u32) {
        let now = self.now();
        let think = self.plan.think_us;
        let stopping = self.draining;
        let Some(ini) = self.initiators.get(i as usize) else {
            return;
        };
        let next = self.rng.range(think / 4, think * 2);
        match ini.ini.phase {
            Phase::Down => {
                if stopping {
                    return;
                }
                if ini.relogin_at.is_some_and(|t| t > now) {
                    let wait = ini.relogin_at.unwrap_or(now) - now;
                    self.schedule(wait, Ev::Work { initiator: i });
                    return;
                }
                let opened = self.target.as_ref().is_some_and(|t| t.lu.is_some());
                let conn = if opened {
                    self.net.connect(Host::Initiator(i), Host::Target)
                } else {
                    None
                };
                let Some(conn) = conn else {
                    let retry = self.rng.range(100_000, 1_000_000);
                    self.schedule(retry, Ev::Work { initiator: i });
                    return;
                };
                let pdus = match self.initiators.get_mut(i as usize) {
                    Some(ini) => {
                        ini.conn = Some(conn);
                        ini.ini.login(VOLUME)
                    }
                    None => return,
                };
                for pdu in pdus {
                    self.initiator_send(conn, pdu);
                }
                self.schedule(next, Ev::Work { initiator: i });
            }
            Phase::Login1 | Phase::Login2 | Phase::LoggingOut => {
                self.schedule(next, Ev::Work { initiator: i });
            }
            Phase::Full => {
                if !stopping && ini.ini.open_commands() < self.plan.qd && ini.ini.can_issue() {
                    self.issue_random(i);
                }
                if !stopping {
                    self.schedule(next, Ev::Work { initiator: i });
                }
            }
        }
    }

    fn initiator_send(&mut self, conn: ConnId, pdu: Pdu) {
        let now = self.now();
        if let Some(at) = self.net.send(&mut self.rng, now, conn, End::Server) {
            self.schedule_at(
                at,
                Ev::Pdu {
                    conn,
                    to: End::Server,
                    pdu,
                },
            );
        }
    }

    fn pick_kind(&mut self) -> &'static str {
        let total: u64 = MIX.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.below(total);
        for (k, w) in MIX {
            if x < *w {
                return k;
            }
            x -= w;
        }
        "read"
    }

    fn issue_random(&mut self, i: u32) {
        let now = self.now();
        let blocks_total = self.lu_blocks().max(1);
        let kind = if self.quiet {
            "read_or_write"
        } else {
            self.pick_kind()
        };
        let kind = if kind == "read_or_write" {
            if self.rng.chance(50) {
                "read"
            } else {
                "write"
            }
        } else {
            kind
        };
        let max_len = if self.rng.chance(10) { 64 } else { 8 };
        let lba = self.rng.below(blocks_total);
        let len = self.rng.range(1, max_len).min(blocks_total - lba) as u32;
        let conn = self.initiators.get(i as usize).and_then(|x| x.conn);
        let command = match kind {
            "read" => Command::Read { lba, blocks: len },
            "write" | "write_fua" => {
                let lbas: Vec<u64> = (lba..lba + u64::from(len)).collect();
                let id = self.model.issue_write(now, &lbas, false);
                let mut data = Vec::with_capacity(len as usize * BLOCK);
                for l in &lbas {
                    data.extend_from_slice(&block_content(id, *l as u32));
                }
                Command::Write {
                    lba,
                    data: Bytes::from(data),
                    fua: kind == "write_fua",
                    id,
                }
            }
            "sync" => Command::SyncCache,
            "unmap" => {
                let lbas: Vec<u64> = (lba..lba + u64::from(len)).collect();
                let id = self.model.issue_write(now, &lbas, true);
                Command::Unmap {
                    lba,
                    blocks: len,
                    id,
                }
            }
            "write_same" | "write_zeroes" => {
                let zero = kind == "write_zeroes";
                let lbas: Vec<u64> = (lba..lba + u64::from(len)).collect();
                let id = self.model.issue_write(now, &lbas, zero);
                let block = if zero {
                    vec![0u8; BLOCK]
                } else {
                    block_content(id, SAME_LBA)
                };
                Command::WriteSame {
                    lba,
                    blocks: len,
                    block: Bytes::from(block),
                    id,
                }
            }
            "compare_and_write" => {
                // Compare with what the oracle says the block holds when
                // only one value is possible; else with a guess (then a
                // miscompare is as right as a match).
                let allowed = self.model.allowed(lba, now, now);
                let expect = allowed.last().copied().unwrap_or(0);
                let id = self.model.issue_write(now, &[lba], false);
                Command::CompareAndWrite {
                    lba,
                    verify: Bytes::from(block_content(expect, lba as u32)),
                    data: Bytes::from(block_content(id, lba as u32)),
                    id,
                }
            }
            "abort_task" => {
                let Some(ini) = self.initiators.get_mut(i as usize) else {
                    return;
                };
                let itts = ini.ini.open_itts();
                if let (Some(&itt), Some(conn)) = (self.rng.pick(&itts), conn) {
                    let pdus = ini.ini.abort_task(itt);
                    self.count_op("abort_task");
                    for pdu in pdus {
                        self.initiator_send(conn, pdu);
                    }
                }
                return;
            }
            "lun_reset" => {
                if let (Some(ini), Some(conn)) = (self.initiators.get_mut(i as usize), conn) {
                    let pdus = ini.ini.lun_reset();
                    self.count_op("lun_reset");
                    for pdu in pdus {
                        self.initiator_send(conn, pdu);
                    }
                }
                return;
            }
            "relogin" => {
                if let (Some(ini), Some(conn)) = (self.initiators.get_mut(i as usize), conn) {
                    let pdus = ini.ini.logout();
                    self.count_op("relogin");
                    for pdu in pdus {
                        self.initiator_send(conn, pdu);
                    }
                }
                return;
            }
            _ => {
                // Drop the connection without a logout (a cable pulled).
                if let Some(conn) = conn {
                    self.count_op("drop_connection");
                    self.close_conn(conn);
                }
                return;
            }
        };
        self.count_op(kind);
        let Some(ini) = self.initiators.get_mut(i as usize) else {
            return;
        };
        let (itt, pdus) = ini.ini.issue(command, now);
        ini.stalled_check.insert(itt, now);
        let cmd_sn = ini.ini.cmd_sn_of(itt).unwrap_or(0);
        self.stats.commands += 1;
        self.schedule(
            COMMAND_TIMEOUT_US,
            Ev::CommandTimeout {
                initiator: i,
                itt,
                cmd_sn,
            },
        );
        if let Some(conn) = conn {
            for pdu in pdus {
                self.initiator_send(conn, pdu);
            }
        }
    }

    /// A command's timeout expired: the initiator aborts it if it is still
    /// open (a command the target ended without status ends so).
    pub(super) fn command_timeout(&mut self, i: u32, itt: u32, cmd_sn: u32) {
        let Some(ini) = self.initiators.get_mut(i as usize) else {
            return;
        };
        let Some(conn) = ini.conn else {
            return;
        };
        let pdus = ini.ini.timed_out(itt, cmd_sn);
        if !pdus.is_empty() {
            self.count_op("timeout_abort");
        }
        for pdu in pdus {
            self.initiator_send(conn, pdu);
        }
    }

    fn count_op(&mut self, kind: &'static str) {
        *self.stats.ops_by_kind.entry(kind).or_default() += 1;
    }

    fn initiator_of(&self, conn: ConnId) -> Option<u32> {
        self.initiators
            .iter()
            .position(|x| x.conn == Some(conn))
            .map(|i| i as u32)
    }

    /// A PDU reaches an initiator.
    pub(super) fn initiator_pdu(&mut self, conn: ConnId, pdu: Pdu) {
        let Some(i) = self.initiator_of(conn) else {
            return;
        };
        let Some(ini) = self.initiators.get_mut(i as usize) else {
            return;
        };
        match ini.ini.on_pdu(pdu) {
            Ok((send, done)) => {
                let logged_out = ini.ini.phase == Phase::Down;
                for pdu in send {
                    self.initiator_send(conn, pdu);
                }
                self.finished(i, done, Some(conn));
                if logged_out {
                    if let Some(ini) = self.initiators.get_mut(i as usize) {
                        ini.conn = None;
                    }
                    self.close_conn(conn);
                }
            }
            Err(e) => self.fail(format!("initiator {i}: {e}")),
        }
    }

    /// An initiator's connection closed.
    pub(super) fn initiator_closed(&mut self, conn: ConnId) {
        let Some(i) = self.initiator_of(conn) else {
            return;
        };
        let now = self.now();
        let delay = self.rng.range(10_000, 500_000);
        let Some(ini) = self.initiators.get_mut(i as usize) else {
            return;
        };
        ini.conn = None;
        ini.relogin_at = Some(now + delay);
        let done = ini.ini.connection_lost();
        self.finished(i, done, Some(conn));
        self.schedule(delay, Ev::Work { initiator: i });
    }

    /// Judges finished commands.
    fn finished(&mut self, i: u32, done: Vec<Finished>, conn: Option<ConnId>) {
        let now = self.now();
        for f in done {
            if let Some(ini) = self.initiators.get_mut(i as usize) {
                ini.stalled_check.remove(&f.itt);
            }
            self.judge(f, now, conn);
        }
    }

    fn judge(&mut self, f: Finished, now: u64, conn: Option<ConnId>) {
        let ambiguous = |w: &mut World<'_>, id: u64| {
            let mark = w.next_perform;
            let instance = w.instances;
            w.ambiguous.push(Ambiguous {
                id,
                perform_mark: mark,
                instance,
                conn,
            });
        };
        match (&f.command, &f.outcome) {
            (Command::Read { lba, blocks }, Outcome::Good(data)) => {
                if data.len() != *blocks as usize * BLOCK {
                    self.fail(format!(
                        "READ of {blocks} blocks at {lba} returned {} bytes",
                        data.len()
                    ));
                    return;
                }
                for (k, block) in data.chunks(BLOCK).enumerate() {
                    let l = lba + k as u64;
                    if let Err(e) = self.model.check_block(l, block, f.issued, now) {
                        self.fail(format!("block semantics: READ at {lba}+{k}: {e}"));
                        return;
                    }
                }
                self.stats.reads_checked += 1;
            }
            (Command::SyncCache, Outcome::Good(_)) => self.model.flushed(f.issued, now),
            (Command::Write { id, fua, .. }, Outcome::Good(_)) => {
                self.model.ack_write(*id, now, *fua)
            }
            (
                Command::Unmap { id, .. }
                | Command::WriteSame { id, .. }
                | Command::CompareAndWrite { id, .. },
                Outcome::Good(_),
            ) => self.model.ack_write(*id, now, false),
            (
                Command::CompareAndWrite {
                    id, lba, verify, ..
                },
                Outcome::Check { key: 0x0e, .. },
            ) => {
                // MISCOMPARE: nothing written; the block must have been able
                // to differ from what was compared.
                let expected = crate::model::decode_block(verify, *lba).unwrap_or(0);
                let allowed = self.model.allowed(*lba, f.issued, now);
                self.model.end_write(*id, now);
                if allowed == [expected] {
                    self.fail(format!(
                        "COMPARE AND WRITE at {lba} miscompared although the block can only hold write {expected}"
                    ));
                }
            }
            (command, Outcome::Check { key: 0x05, .. }) if command.write_id().is_some() => {
                // ILLEGAL REQUEST: refused before it ran.
                if let Some(id) = command.write_id() {
                    self.model.end_write(id, now);
                }
            }
            (command, _) => {
                if let Some(id) = command.write_id() {
                    ambiguous(self, id);
                }
            }
        }
        self.resolve_ambiguous();
    }

    /// Ends the ambiguous writes that can no longer land: every block
    /// request the target started until they were given up has finished
    /// (and the target saw their connection close), or, if that target
    /// died, a new one has claimed every member (fencing the old session's
    /// leftovers).
    pub(super) fn resolve_ambiguous(&mut self) {
        if self.ambiguous.is_empty() {
            return;
        }
        let now = self.now();
        let oldest_running = self.performs_running();
        let instance = self.instance_now();
        let settled = self.target_settled();
        let mut keep = Vec::new();
        for a in std::mem::take(&mut self.ambiguous) {
            let done = if Some(a.instance) == instance {
                oldest_running.is_none_or(|p| p >= a.perform_mark)
                    && a.conn.is_none_or(|c| {
                        self.target_saw_close(c)
                            || self.net.host(c, End::Server) != Some(Host::Target)
                    })
            } else {
                settled
            };
            if done {
                self.model.end_write(a.id, now);
            } else {
                keep.push(a);
            }
        }
        self.ambiguous = keep;
    }

    fn instance_now(&self) -> Option<u64> {
        self.target.as_ref().map(|t| t.instance)
    }

    /// Faults and operator actions stop; everything heals and restarts.
    pub(super) fn begin_quiet(&mut self) {
        self.quiet = true;
        self.quiet_since = self.now();
        self.net.heal_all();
        let hosts: Vec<u32> = self
            .replicas
            .iter()
            .filter(|r| r.running.is_none() && !r.retired)
            .map(|r| r.host)
            .collect();
        for host in hosts {
            self.schedule(0, Ev::StartReplica { host });
        }
        if self.target.is_none() {
            self.schedule(0, Ev::StartTarget);
        }
        // The workload goes on a while with faults over, then drains.
        let quiet = self.rng.range(1_000_000, 3_000_000);
        self.schedule(quiet, Ev::Drain);
    }

    /// The workload stops issuing; the run ends once everything settled.
    pub(super) fn begin_drain(&mut self) {
        self.draining = true;
        self.drain_since = self.now();
    }

    /// Liveness: with faults over, every command completes in bounded time.
    pub(super) fn check_liveness(&mut self) {
        if !self.quiet {
            return;
        }
        let now = self.now();
        let start = self.quiet_since;
        for (i, ini) in self.initiators.iter().enumerate() {
            if let Some((itt, issued, command)) = ini.ini.oldest_open_command() {
                let since = issued.max(start);
                if now > since + LIVENESS_BOUND_US {
                    let what = format!("{command:?}");
                    let what: String = what.chars().take(80).collect();
                    let msg = format!(
                        "liveness: initiator {i}'s command ITT {itt} ({what}) issued at {:.3} s is still open {:.1} s after the faults stopped",
                        issued as f64 / 1e6,
                        (now - start) as f64 / 1e6
                    );
                    self.fail(msg);
                    return;
                }
            }
        }
    }

    /// Every command answered, every replica healthy and answered, nothing
    /// rebuilding.
    pub(super) fn drained(&mut self) -> bool {
        self.check_liveness();
        let now = self.now();
        if now > self.drain_since + CONVERGENCE_BOUND_US {
            let states = self.volume_view().map(|v| v.0);
            self.fail(format!(
                "convergence: {:.0} s after the faults stopped the replicas are still {states:?}",
                (now - self.quiet_since) as f64 / 1e6
            ));
            return false;
        }
        if self.initiators.iter().any(|i| i.ini.open_commands() > 0) {
            return false;
        }
        let Some((states, addrs, cf, busy)) = self.volume_view() else {
            return false;
        };
        let healthy = states
            .iter()
            .filter(|s| **s == ReplicaState::Healthy)
            .count();
        let settled = !busy
            && states.iter().zip(&addrs).all(|(s, a)| {
                matches!(s, ReplicaState::Healthy | ReplicaState::Removed)
                    || (*s == ReplicaState::Failed && self.pool_full(*a))
            })
            && self.performs_running().is_none()
            && !self.replicas_owe()
            // A disk fault armed late may fire after the faults stopped;
            // the run waits for the restart it scheduled (the pool may be
            // poisoned without the target knowing, as no IO is left).
            && !self.replicas.iter().any(|r| r.disk_armed && r.running.is_some())
            && self.replicas.iter().all(|r| r.running.is_some() || r.retired)
            && self.exec_quiet();
        // A destroy needs quorum: without it (a replica rightly failed for
        // want of space under a CF of every member) there is no retry.
        settled && !(healthy >= cf && self.retry_doubtful_destroy())
    }

    /// The operator destroys a snapshot in doubt (one whose create or
    /// destroy failed), once at a time, until it succeeds; true while one
    /// is left.
    fn retry_doubtful_destroy(&mut self) -> bool {
        let Some(name) = self.doubtful_snapshots.keys().next().cloned() else {
            return false;
        };
        let in_flight = self
            .target
            .as_ref()
            .is_some_and(|t| matches!(&t.state, TargetState::Open(v) if !v.operator.is_empty()));
        if !in_flight {
            if let Ok(n) = Name::new(name.clone()) {
                self.submit_operator(
                    Op::SnapshotDestroy { name: n },
                    OperatorOp::DestroySnapshot { name },
                );
            }
        }
        true
    }

    /// Remembers whether a replica's last refusal was for want of space.
    pub(super) fn note_space(&mut self, instance: u64, replica: usize, message: &Message) {
        let full = match message {
            Message::Error(e) => e.status == Status::NoSpace,
            Message::RebuildAbort(a) => a.status == Status::NoSpace,
            Message::RebuildDone(_) => false,
            _ => return,
        };
        let host = self
            .open_volume(instance)
            .and_then(|v| v.links.get(replica))
            .map(|l| l.host);
        if let Some(r) = host.and_then(|h| self.replicas.get_mut(h as usize)) {
            r.out_of_space = full;
        }
    }

    /// A replica that cannot hold the volume (its pool is too small for
    /// the data and snapshots, or its last refusal was for want of space:
    /// a rebuild into a sink keeping its own snapshots may need more than
    /// the source holds): out of space, it rightly stays failed.
    fn pool_full(&self, addr: SocketAddr) -> bool {
        let size = self
            .volume_view_size_bytes()
            .unwrap_or(self.plan.volume_bytes);
        self.replicas
            .iter()
            .find(|r| r.addr == addr)
            .is_some_and(|r| {
                r.out_of_space
                    || r.running
                        .as_ref()
                        .is_some_and(|run| run.registry.pool().stats().free_bytes < size)
            })
    }

    fn exec_quiet(&self) -> bool {
        // Rebuild tasks and in-flight IOs have ended on every replica
        // (also IOs of connections closed meanwhile).
        self.replicas.iter().all(|r| {
            r.running.as_ref().is_none_or(|run| {
                run.ios == 0
                    && run.conns.values().all(|c| match c {
                        RConn::Open {
                            in_flight, waiting, ..
                        } => *in_flight == 0 && waiting.is_empty(),
                        RConn::Opening(_) => false,
                    })
            })
        })
    }

    /// Convergence: every healthy replica holds the same blocks and the
    /// same snapshots; every block is what the oracle allows after the
    /// last write; every snapshot holds the volume as it was when taken.
    pub(super) fn final_checks(&mut self) {
        let Some((states, addrs, _, _)) = self.volume_view() else {
            return;
        };
        let now = self.now();
        let healthy_hosts: Vec<u32> = states
            .iter()
            .zip(&addrs)
            .filter(|(s, _)| **s == ReplicaState::Healthy)
            .filter_map(|(_, a)| self.replicas.iter().find(|r| r.addr == *a).map(|r| r.host))
            .collect();
        let mut reference: Option<(u32, Vec<u8>, Snapshots)> = None;
        for host in healthy_hosts {
            let Some(run) = self
                .replicas
                .get(host as usize)
                .and_then(|r| r.running.as_ref())
            else {
                self.fail(format!(
                    "convergence: healthy replica {host} is not running"
                ));
                return;
            };
            let pool = Arc::clone(run.registry.pool());
            let volume = match pool.volume(VOLUME) {
                Ok(v) => v,
                Err(e) => {
                    self.fail(format!("convergence: replica {host}: {e}"));
                    return;
                }
            };
            // The volume's size (a replica that grew past it keeps the rest).
            let size = self
                .volume_view_size_bytes()
                .unwrap_or_else(|| volume.size_bytes().unwrap_or(0));
            let mut data = vec![0u8; size as usize];
            match at_once(volume.read(0, &mut data)) {
                Ok(Ok(())) => {}
                other => {
                    self.fail(format!("convergence: reading replica {host}: {other:?}"));
                    return;
                }
            }
            let mut snaps = BTreeMap::new();
            for info in volume.list_snapshots().unwrap_or_default() {
                let mut s = vec![0u8; info.size_bytes as usize];
                match at_once(volume.read_snapshot(&info.name, 0, &mut s)) {
                    Ok(Ok(())) => {
                        snaps.insert(info.name.clone(), s);
                    }
                    other => {
                        self.fail(format!(
                            "convergence: snapshot {} of replica {host}: {other:?}",
                            info.name
                        ));
                        return;
                    }
                }
            }
            match &reference {
                None => {
                    // The data against the oracle, block by block.
                    for (k, block) in data.chunks(BLOCK).enumerate() {
                        if let Err(e) = self.model.check_block(k as u64, block, now, now) {
                            self.fail(format!("convergence: replica {host}, final content: {e}"));
                            return;
                        }
                    }
                    for (name, content) in &snaps {
                        let doubtful = self.doubtful_snapshots.get(name).copied().flatten();
                        let Some((asked, taken)) = self.snapshots.get(name).copied().or(doubtful)
                        else {
                            continue; // taken by too few replicas: destroyed later, or never acknowledged
                        };
                        for (k, block) in content.chunks(BLOCK).enumerate() {
                            if let Err(e) = self
                                .model
                                .check_snapshot_block(k as u64, block, asked, taken)
                            {
                                self.fail(format!("snapshot {name} on replica {host}: {e}"));
                                return;
                            }
                        }
                    }
                    for name in self.snapshots.keys() {
                        if !snaps.contains_key(name) {
                            self.fail(format!("convergence: acknowledged snapshot {name} missing on replica {host}"));
                            return;
                        }
                    }
                    reference = Some((host, data, snaps));
                }
                Some((h0, d0, s0)) => {
                    if let Some(k) = d0
                        .chunks(BLOCK)
                        .zip(data.chunks(BLOCK))
                        .position(|(a, b)| a != b)
                    {
                        let holds = |d: &[u8]| {
                            d.chunks(BLOCK).nth(k).map_or_else(
                                || "nothing".to_owned(),
                                |b| match crate::model::decode_block(b, k as u64) {
                                    Ok(id) => format!("write {id}"),
                                    Err(e) => e,
                                },
                            )
                        };
                        let msg = format!(
                            "convergence: replicas {h0} and {host} differ at block {k} ({} and {})",
                            holds(d0),
                            holds(&data)
                        );
                        self.fail(msg);
                        return;
                    }
                    if d0.len() != data.len() {
                        let msg = format!("convergence: replicas {h0} and {host} differ in size");
                        self.fail(msg);
                        return;
                    }
                    let n0: Vec<&String> = s0.keys().collect();
                    let n1: Vec<&String> = snaps.keys().collect();
                    if n0 != n1 {
                        let msg = format!("convergence: replicas {h0} and {host} hold snapshots {n0:?} and {n1:?}");
                        self.fail(msg);
                        return;
                    }
                    for (name, c0) in s0 {
                        if snaps.get(name) != Some(c0) {
                            let at = snaps.get(name).and_then(|c1| {
                                c0.chunks(BLOCK)
                                    .zip(c1.chunks(BLOCK))
                                    .position(|(a, b)| a != b)
                            });
                            let at = at
                                .map_or_else(|| "in size".to_owned(), |k| format!("at block {k}"));
                            let msg = format!("convergence: snapshot {name} differs between replicas {h0} and {host} ({at})");
                            self.fail(msg);
                            return;
                        }
                    }
                }
            }
        }
    }
}
