//! Faults and operator actions, drawn from the seed while the fault phase
//! lasts.

use super::*;

use cstor_target::volume::membership::{Change, MemberRef};

impl World<'_> {
    fn count_fault(&mut self, kind: &'static str) {
        *self.stats.faults_by_kind.entry(kind).or_default() += 1;
    }

    pub(super) fn count_operator(&mut self, kind: &'static str) {
        *self.stats.operator_by_kind.entry(kind).or_default() += 1;
    }

    fn live_replicas(&self) -> Vec<u32> {
        self.replicas
            .iter()
            .filter(|r| r.running.is_some() && !r.retired)
            .map(|r| r.host)
            .collect()
    }

    /// Is replica `host` under a fault now (down, cut off, slow, or its
    /// disk armed to fail)?
    fn faulty(&self, host: u32) -> bool {
        let Some(r) = self.replicas.get(host as usize) else {
            return true;
        };
        r.running.is_none()
            || r.disk_armed
            || self.net.is_cut(Host::Replica(host))
            || self.net.slowness(Host::Replica(host)) > 0
    }

    /// The replicas a fault may hit: while the run stays within what the
    /// volume tolerates, never the last healthy replica that no fault
    /// touches (with it, acknowledged writes could exist nowhere else:
    /// docs/simulation.md, "Faults"). A volume of one member tolerates
    /// its crash (it carries on from what its pool kept).
    fn fault_candidates(&mut self) -> Vec<u32> {
        let live = self.live_replicas();
        if self.beyond_tolerance {
            return live;
        }
        let Some((states, addrs, _, _)) = self.volume_view() else {
            // No open target: the states are unknown; hit nothing.
            return Vec::new();
        };
        let members: Vec<u32> = states
            .iter()
            .zip(&addrs)
            .filter(|(s, _)| **s != ReplicaState::Removed)
            .filter_map(|(_, a)| self.replicas.iter().find(|r| r.addr == *a).map(|r| r.host))
            .collect();
        let sound: Vec<u32> = states
            .iter()
            .zip(&addrs)
            .filter(|(s, _)| **s == ReplicaState::Healthy)
            .filter_map(|(_, a)| self.replicas.iter().find(|r| r.addr == *a).map(|r| r.host))
            .filter(|h| !self.faulty(*h))
            .collect();
        live.into_iter()
            .filter(|h| members.len() == 1 || sound.iter().any(|o| o != h))
            .collect()
    }

    /// The next fault, then schedules the one after.
    pub(super) fn fault(&mut self) {
        if self.quiet {
            return;
        }
        let live = self.fault_candidates();
        let roll = self.rng.below(100);
        match roll {
            0..=19 => {
                if let Some(&host) = self.rng.pick(&live) {
                    let power = self.rng.chance(70);
                    let torn = power && self.rng.chance(50);
                    self.count_fault(if power {
                        "replica_power_cut"
                    } else {
                        "replica_kill"
                    });
                    self.crash_replica(host, power, torn);
                    let back = self.rng.range(100_000, 4_000_000);
                    self.schedule(back, Ev::StartReplica { host });
                }
            }
            20..=29 => {
                if self.target.is_some() {
                    self.count_fault("target_crash");
                    self.crash_target();
                    let back = self.rng.range(50_000, 2_000_000);
                    self.schedule(back, Ev::StartTarget);
                }
            }
            30..=49 => {
                // A partition of a replica (or of the target) that heals.
                let host = if self.rng.chance(80) || self.beyond_tolerance {
                    self.rng.pick(&live).map(|h| Host::Replica(*h))
                } else {
                    Some(Host::Target)
                };
                if let Some(host) = host {
                    self.count_fault("partition");
                    self.net.cut(host);
                    for conn in self.net.conns_of(host) {
                        if !matches!(self.net.host(conn, End::Client), Some(Host::Initiator(_)))
                            || host == Host::Target
                        {
                            self.close_conn(conn);
                        }
                    }
                    for (a, b, link) in &self.rebuild_links {
                        let _ = (a, b);
                        link.break_link();
                    }
                    let heal = self.rng.range(50_000, 6_000_000);
                    self.schedule(heal, Ev::Heal { host });
                }
            }
            50..=64 => {
                // A connection reset.
                let conns: Vec<ConnId> = live
                    .iter()
                    .flat_map(|h| self.net.conns_of(Host::Replica(*h)))
                    .collect();
                if let Some(&conn) = self.rng.pick(&conns) {
                    self.count_fault("connection_reset");
                    self.close_conn(conn);
                }
            }
            65..=74 => {
                // A slow replica: slower than the ack timeout now and then.
                if let Some(&host) = self.rng.pick(&live) {
                    let extra = if self.rng.chance(30) {
                        self.rng.range(5_500_000, 8_000_000)
                    } else {
                        self.rng.range(2_000, 200_000)
                    };
                    self.count_fault("slow_replica");
                    self.net.set_slow(Host::Replica(host), extra);
                    let heal = self.rng.range(500_000, 10_000_000);
                    self.schedule(
                        heal,
                        Ev::Heal {
                            host: Host::Replica(host),
                        },
                    );
                }
            }
            75..=84 => {
                // A disk error: the next write or sync of a replica fails;
                // the daemon is restarted later (its pool is poisoned).
                if let Some(&host) = self.rng.pick(&live) {
                    if let Some(r) = self.replicas.get_mut(host as usize) {
                        r.disk_armed = true;
                        let counts = r.device.counts();
                        if self.rng.chance(50) {
                            r.device
                                .fail_nth_write(counts.writes + self.rng.range(1, 20));
                        } else {
                            r.device.fail_nth_sync(counts.syncs + self.rng.range(1, 5));
                        }
                    }
                    self.count_fault("disk_error");
                    let restart = self.rng.range(1_000_000, 6_000_000);
                    self.schedule(restart, Ev::RestartReplica { host });
                }
            }
            85..=91 => {
                // A slow link task: the target's task for one replica's link
                // falls behind the controller (commands reach it late) while
                // its connections come and go on time, so a command decided
                // for one connection may reach the link once the next is up.
                let now = self.now();
                let lag = self.rng.range(20_000, 1_500_000);
                let lasts = self.rng.range(500_000, 5_000_000);
                let pick = self.rng.below(8) as usize;
                let lagged = self.target.as_mut().and_then(|t| match &mut t.state {
                    TargetState::Open(v) => {
                        let n = v.links.len();
                        let l = v.links.get_mut(pick % n.max(1))?;
                        l.lag_us = lag;
                        l.lag_until = now + lasts;
                        Some(())
                    }
                    TargetState::Probing { .. } => None,
                });
                if lagged.is_some() {
                    self.count_fault("slow_link_task");
                }
            }
            _ => {
                // A slower network for everyone, briefly: nothing to do
                // but vary the delays (kept in the latency of the run).
                self.count_fault("quiet_spell");
            }
        }
        let next = self.rng.range(200_000, 3_000_000);
        self.schedule(next, Ev::Fault);
    }

    /// A scrub step over a random 64 KiB-aligned range (`--scrub`): its
    /// digest first; the read and the repair follow its completion.
    fn scrub_range(&mut self) {
        let size = self.volume_view_size().unwrap_or(self.plan.volume_bytes);
        let ranges = size / SCRUB_SIM_RANGE;
        if ranges == 0 {
            return;
        }
        let offset = self.rng.below(ranges) * SCRUB_SIM_RANGE;
        if self.submit_operator(
            Op::Digest {
                offset,
                len_bytes: SCRUB_SIM_RANGE as u32,
            },
            OperatorOp::ScrubDigest { offset },
        ) {
            self.count_operator("scrub_digest");
        }
    }

    /// The next operator action, then schedules the one after.
    pub(super) fn operator(&mut self) {
        if self.quiet {
            return;
        }
        let next = self.rng.range(500_000, 4_000_000);
        self.schedule(next, Ev::Operator);
        let Some((states, addrs, cf, busy)) = self.volume_view() else {
            return;
        };
        if self.opts.scrub {
            self.scrub_range();
        }
        if busy {
            return;
        }
        let now = self.now();
        let roll = self.rng.below(100);
        match roll {
            0..=39 => {
                let name = format!("snap{}", self.next_snapshot);
                self.next_snapshot += 1;
                let Ok(n) = Name::new(name.clone()) else {
                    return;
                };
                if self.submit_operator(
                    Op::SnapshotCreate { name: n },
                    OperatorOp::Snapshot {
                        name,
                        submitted: now,
                    },
                ) {
                    self.count_operator("snapshot_create");
                }
            }
            40..=54 => {
                // A refused destroy is retried too, as CSI does.
                let names: Vec<String> = (self.snapshots.keys())
                    .chain(self.doubtful_snapshots.keys())
                    .cloned()
                    .collect();
                if let Some(name) = self.rng.pick(&names).cloned() {
                    let Ok(n) = Name::new(name.clone()) else {
                        return;
                    };
                    if self.submit_operator(
                        Op::SnapshotDestroy { name: n },
                        OperatorOp::DestroySnapshot { name },
                    ) {
                        self.count_operator("snapshot_destroy");
                    }
                }
            }
            55..=69 => {
                let size = self.volume_view_size().unwrap_or(self.plan.volume_bytes);
                if size < 4 << 20 {
                    let bytes = size + 256 * 1024;
                    if self.submit_operator(Op::Resize { size_bytes: bytes }, OperatorOp::Resize) {
                        self.count_operator("resize");
                    }
                }
            }
            70..=84 => {
                let members = states
                    .iter()
                    .filter(|s| **s != ReplicaState::Removed)
                    .count();
                let new_cf = self.rng.range(1, members as u64) as usize;
                if new_cf != cf && self.submit_change(Change::SetCf(new_cf), None) {
                    self.count_operator("set_cf");
                }
            }
            _ => {
                // Replace a member: add a fresh replica, then remove one.
                let members: Vec<SocketAddr> = states
                    .iter()
                    .zip(&addrs)
                    .filter(|(s, _)| **s != ReplicaState::Removed)
                    .map(|(_, a)| *a)
                    .collect();
                if self.replicas.len() >= 8 {
                    return;
                }
                if members.len() < 5 && self.rng.chance(50) {
                    let bytes = 16u64 << 20;
                    let stale = self.opts.stale_adds;
                    let host = match self.new_replica(bytes, false, stale) {
                        Ok(h) => h,
                        Err(e) => {
                            self.fail(format!("adding a replica: {e}"));
                            return;
                        }
                    };
                    let Some((addr, id)) = self.replica_identity(host) else {
                        return;
                    };
                    let change = Change::Add {
                        address: addr,
                        replica_id: id,
                    };
                    if self.submit_change(change, None) {
                        self.count_operator("replica_add");
                        // The operator names it on the target's command
                        // line too (a restarted target that reached only
                        // removed replicas would not find the volume).
                        self.cli.push(addr);
                    }
                } else if members.len() > cf.max(1) {
                    if let Some(&addr) = self.rng.pick(&members) {
                        let host = self
                            .replicas
                            .iter()
                            .find(|r| r.addr == addr)
                            .map(|r| r.host);
                        if self.submit_change(Change::Remove(MemberRef::Address(addr)), host) {
                            self.count_operator("replica_remove");
                        }
                    }
                }
            }
        }
    }

    pub(super) fn volume_view_size_bytes(&self) -> Option<u64> {
        self.volume_view_size()
    }

    fn volume_view_size(&self) -> Option<u64> {
        let t = self.target.as_ref()?;
        match &t.state {
            TargetState::Open(v) => Some(v.controller.size_bytes()),
            TargetState::Probing { .. } => None,
        }
    }

    /// The address and replica id of a running replica.
    fn replica_identity(&self, host: u32) -> Option<(SocketAddr, u128)> {
        let r = self.replicas.get(host as usize)?;
        let run = r.running.as_ref()?;
        let volume = run.registry.pool().volume(VOLUME).ok()?;
        Some((r.addr, volume.replica_id().ok()?))
    }
}
