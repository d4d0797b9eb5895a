//! Persistent reservations (SPC-4 §5.12, PERSISTENT RESERVE IN §6.15 and
//! OUT §6.16): a pure state machine of registrations and one reservation.
//!
//! Supported: REGISTER, REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE,
//! CLEAR, PREEMPT, PREEMPT AND ABORT; types Write Exclusive, Exclusive
//! Access and their Registrants Only / All Registrants variants; LU scope.
//! Not supported, and refused with ILLEGAL REQUEST: REGISTER AND MOVE,
//! SPEC_I_PT, ALL_TG_PT and APTPL (the state lives in the target process and
//! does not survive its restart: PTPL_C = 0 in REPORT CAPABILITIES).
//!
//! Invariants: at most [`MAX_PR_REGISTRATIONS`] registrations, one per I_T
//! nexus, never with key 0; a reservation exists only while its holder (or,
//! for All Registrants types, some nexus) is registered; the generation
//! counts every change of registrations (wrapping, as SPC-4 allows).
//!
//! PREEMPT AND ABORT also aborts the preempted nexuses' tasks: this core has
//! no task set, so it reports those nexuses in [`PrEffects::aborted`], and
//! the logical unit aborts the commands they have in flight (module
//! `aborts`: no status for them, TAS = 0); like PREEMPT, it gives them
//! REGISTRATIONS PREEMPTED.

use super::cdb::Access;
use super::limits::MAX_PR_REGISTRATIONS;
use super::nexus::Nexus;
use super::sense::{Asc, Sense};

/// PR OUT parameter list length for every service action we support.
pub const PR_OUT_PARAM_LEN: u32 = 24;

/// Reservation type (SPC-4 §6.15.3.4, table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants Only and All Registrants: registrants get access.
    fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2, table 174).
mod action {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

/// Why a PR OUT failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrError {
    #[error("reservation conflict")]
    Conflict,
    #[error("{0}")]
    Sense(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Sense(s)
    }
}

/// Side effects of a successful PR OUT, for the logical unit to apply.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrEffects {
    /// Unit attentions to queue.
    pub unit_attentions: Vec<(Nexus, Asc)>,
    /// Nexuses whose tasks PREEMPT AND ABORT aborts.
    pub aborted: Vec<Nexus>,
}

#[derive(Debug, Clone)]
struct Reservation {
    holder: Nexus,
    pr_type: PrType,
}

/// The persistent reservation state of one logical unit.
#[derive(Debug, Default)]
pub struct Reservations {
    generation: u32,
    /// Registrations in registration order (READ KEYS reports that order).
    registrants: Vec<(Nexus, u64)>,
    reservation: Option<Reservation>,
}

/// A decoded PR OUT parameter list (SPC-4 §6.16.3).
struct OutParams {
    key: u64,
    sa_key: u64,
}

fn parse_out_params(param_len: u32, data: &[u8]) -> Result<OutParams, Sense> {
    if param_len != PR_OUT_PARAM_LEN {
        return Err(Sense::parameter_list_length());
    }
    let Some(list) = data.get(..PR_OUT_PARAM_LEN as usize) else {
        return Err(Sense::parameter_list_length());
    };
    let be64 = |at: usize| {
        list.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .unwrap_or_default()
    };
    let flags = list.get(20).copied().unwrap_or_default();
    for bit in [3u8, 2, 0] {
        // SPEC_I_PT, ALL_TG_PT, APTPL: capabilities we do not offer.
        if flags & (1 << bit) != 0 {
            return Err(Sense::invalid_param_field(20, Some(bit)));
        }
    }
    Ok(OutParams {
        key: be64(0),
        sa_key: be64(8),
    })
}

impl Reservations {
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether any registration exists: RESERVE(6)/RELEASE(6) then
    /// conflict (SPC-4 §5.12.3).
    pub fn active(&self) -> bool {
        !self.registrants.is_empty()
    }

    fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.registrants
            .iter()
            .find(|(n, _)| n == nexus)
            .map(|(_, k)| *k)
    }

    fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            Some(r) if r.pr_type.all_registrants() => self.key_of(nexus).is_some(),
            Some(r) => r.holder == *nexus,
            None => false,
        }
    }

    /// Whether `nexus` may not run a command of class `access` now
    /// (SPC-4 table 42 / SBC-3 table 13).
    pub fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        if access == Access::Always || self.is_holder(nexus) {
            return false;
        }
        if res.pr_type.registrants_have_access() && self.key_of(nexus).is_some() {
            return false;
        }
        access == Access::Write || res.pr_type.exclusive_access()
    }

    /// Executes PERSISTENT RESERVE OUT.
    pub fn out(
        &mut self,
        nexus: &Nexus,
        service_action: u8,
        scope: u8,
        type_code: u8,
        param_len: u32,
        data: &[u8],
    ) -> Result<PrEffects, PrError> {
        let params = parse_out_params(param_len, data)?;
        let registered = self.key_of(nexus);
        match service_action {
            action::REGISTER | action::REGISTER_AND_IGNORE => {
                let ignore = service_action == action::REGISTER_AND_IGNORE;
                self.register(nexus, registered, &params, ignore)
            }
            _ => {
                // Every other action needs the nexus registered under the
                // given key (SPC-4 §5.12.2).
                if registered != Some(params.key) {
                    return Err(PrError::Conflict);
                }
                match service_action {
                    action::RESERVE => {
                        let pr_type = check_scope_and_type(scope, type_code)?;
                        self.reserve(nexus, pr_type)
                    }
                    action::RELEASE => {
                        let pr_type = check_scope_and_type(scope, type_code)?;
                        self.release(nexus, pr_type)
                    }
                    action::CLEAR => Ok(self.clear(nexus)),
                    action::PREEMPT | action::PREEMPT_AND_ABORT => {
                        let pr_type = check_scope_and_type(scope, type_code)?;
                        let mut effects = self.preempt(nexus, params.sa_key, pr_type)?;
                        if service_action == action::PREEMPT_AND_ABORT {
                            effects.aborted = effects
                                .unit_attentions
                                .iter()
                                .map(|(n, _)| n.clone())
                                .collect();
                        }
                        Ok(effects)
                    }
                    _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
                }
            }
        }
    }

    fn register(
        &mut self,
        nexus: &Nexus,
        registered: Option<u64>,
        params: &OutParams,
        ignore_existing: bool,
    ) -> Result<PrEffects, PrError> {
        let mut effects = PrEffects::default();
        match registered {
            None => {
                if !ignore_existing && params.key != 0 {
                    return Err(PrError::Conflict);
                }
                if params.sa_key == 0 {
                    return Ok(effects); // nothing to register
                }
                if self.registrants.len() >= MAX_PR_REGISTRATIONS {
                    return Err(Sense::illegal(Asc::INSUFFICIENT_REGISTRATION_RESOURCES).into());
                }
                self.registrants.push((nexus.clone(), params.sa_key));
            }
            Some(key) => {
                if !ignore_existing && params.key != key {
                    return Err(PrError::Conflict);
                }
                if params.sa_key == 0 {
                    self.unregister(nexus, &mut effects);
                } else if let Some(entry) = self.registrants.iter_mut().find(|(n, _)| n == nexus) {
                    entry.1 = params.sa_key;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(effects)
    }

    /// Removes `nexus`'s registration, releasing a reservation it held
    /// (SPC-4 §5.12.11.2.3).
    fn unregister(&mut self, nexus: &Nexus, effects: &mut PrEffects) {
        let was_holder = self.is_holder(nexus);
        self.registrants.retain(|(n, _)| n != nexus);
        let Some(res) = &self.reservation else { return };
        let release = if res.pr_type.all_registrants() {
            self.registrants.is_empty()
        } else {
            was_holder
        };
        if release {
            if res.pr_type.registrants_have_access() {
                self.notify_registrants(nexus, Asc::RESERVATIONS_RELEASED, effects);
            }
            self.reservation = None;
        }
    }

    fn notify_registrants(&self, except: &Nexus, asc: Asc, effects: &mut PrEffects) {
        effects.unit_attentions.extend(
            self.registrants
                .iter()
                .filter(|(n, _)| n != except)
                .map(|(n, _)| (n.clone(), asc)),
        );
    }

    fn reserve(&mut self, nexus: &Nexus, pr_type: PrType) -> Result<PrEffects, PrError> {
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    holder: nexus.clone(),
                    pr_type,
                });
                Ok(PrEffects::default())
            }
            Some(res) if res.pr_type == pr_type && self.is_holder(nexus) => {
                Ok(PrEffects::default())
            }
            Some(_) => Err(PrError::Conflict),
        }
    }

    fn release(&mut self, nexus: &Nexus, pr_type: PrType) -> Result<PrEffects, PrError> {
        let mut effects = PrEffects::default();
        let Some(res) = &self.reservation else {
            return Ok(effects);
        };
        if !self.is_holder(nexus) {
            return Ok(effects); // SPC-4 §5.12.11.2.2: not the holder, no-op
        }
        if res.pr_type != pr_type {
            return Err(Sense::illegal(Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION).into());
        }
        if res.pr_type.registrants_have_access() {
            self.notify_registrants(nexus, Asc::RESERVATIONS_RELEASED, &mut effects);
        }
        self.reservation = None;
        Ok(effects)
    }

    fn clear(&mut self, nexus: &Nexus) -> PrEffects {
        let mut effects = PrEffects::default();
        self.notify_registrants(nexus, Asc::RESERVATIONS_PREEMPTED, &mut effects);
        self.registrants.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        effects
    }

    /// PREEMPT (SPC-4 §5.12.11.4): removes the registrations holding
    /// `victim_key` and, when they held the reservation, takes it over.
    fn preempt(
        &mut self,
        nexus: &Nexus,
        victim_key: u64,
        pr_type: PrType,
    ) -> Result<PrEffects, PrError> {
        let mut effects = PrEffects::default();
        let all_registrants = self
            .reservation
            .as_ref()
            .is_some_and(|r| r.pr_type.all_registrants());
        let holder_key = match &self.reservation {
            Some(r) if !r.pr_type.all_registrants() => self.key_of(&r.holder),
            _ => None,
        };
        let take_over = if all_registrants {
            victim_key == 0
        } else {
            self.reservation.is_some() && holder_key == Some(victim_key)
        };
        if victim_key == 0 && !take_over {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        let matches = |k: u64| {
            if all_registrants && victim_key == 0 {
                true
            } else {
                k == victim_key
            }
        };
        if !take_over && !self.registrants.iter().any(|(_, k)| matches(*k)) {
            return Err(PrError::Conflict);
        }
        // The issuing nexus keeps its own registration even when its key
        // is the one preempted (SPC-4 §5.12.11.4).
        let victims: Vec<Nexus> = self
            .registrants
            .iter()
            .filter(|(n, k)| n != nexus && matches(*k))
            .map(|(n, _)| n.clone())
            .collect();
        self.registrants.retain(|(n, _)| !victims.contains(n));
        effects.unit_attentions.extend(
            victims
                .into_iter()
                .map(|n| (n, Asc::REGISTRATIONS_PREEMPTED)),
        );
        if take_over {
            self.reservation = Some(Reservation {
                holder: nexus.clone(),
                pr_type,
            });
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(effects)
    }

    /// PERSISTENT RESERVE IN parameter data for `service_action` (0..=3,
    /// already checked by the CDB parser).
    pub fn read(&self, service_action: u8) -> Vec<u8> {
        let mut out = self.generation.to_be_bytes().to_vec();
        match service_action {
            0 => {
                let keys: Vec<u8> = self
                    .registrants
                    .iter()
                    .flat_map(|(_, k)| k.to_be_bytes())
                    .collect();
                push_len_and(&mut out, &keys);
            }
            1 => {
                let mut body = Vec::new();
                if let Some(res) = &self.reservation {
                    // All Registrants types report key 0 (SPC-4 §6.15.3.2).
                    let key = if res.pr_type.all_registrants() {
                        0
                    } else {
                        self.key_of(&res.holder).unwrap_or_default()
                    };
                    body.extend_from_slice(&key.to_be_bytes());
                    body.extend_from_slice(&[0, 0, 0, 0, 0, res.pr_type as u8, 0, 0]);
                }
                push_len_and(&mut out, &body);
            }
            2 => {
                // REPORT CAPABILITIES (SPC-4 §6.15.4): length 8, no CRH,
                // SIP_C, ATP_C, PTPL_C; TMV with our type mask.
                out = vec![0x00, 0x08, 0x00, 0x80];
                out.extend_from_slice(&[0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
            }
            _ => {
                let mut body = Vec::new();
                for (n, key) in &self.registrants {
                    let holder = self.is_holder(n);
                    body.extend_from_slice(&key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    body.push(u8::from(holder)); // R_HOLDER; ALL_TG_PT = 0
                    let type_byte = match &self.reservation {
                        Some(r) if holder => r.pr_type as u8,
                        _ => 0,
                    };
                    body.push(type_byte);
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&n.relative_target_port().to_be_bytes());
                    let tid = n.transport_id();
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                push_len_and(&mut out, &body);
            }
        }
        out
    }
}

fn push_len_and(out: &mut Vec<u8>, body: &[u8]) {
    // Bounded by MAX_PR_REGISTRATIONS descriptors of ≤ 284 bytes.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn check_scope_and_type(scope: u8, type_code: u8) -> Result<PrType, Sense> {
    if scope != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    }
    PrType::from_code(type_code).ok_or(Sense::invalid_cdb_field(2, Some(3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> Nexus {
        Nexus::new(&format!("iqn.init{i},i,0x00023d000001"), 1)
    }

    fn params(key: u64, sa_key: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }

    fn out(
        r: &mut Reservations,
        who: u8,
        sa: u8,
        t: PrType,
        key: u64,
        sa_key: u64,
    ) -> Result<PrEffects, PrError> {
        r.out(&n(who), sa, 0, t as u8, 24, &params(key, sa_key))
    }

    const WE: PrType = PrType::WriteExclusive;

    #[test]
    fn register_reserve_and_conflict_for_others() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 0xa).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 0xa, 0).unwrap();
        assert!(!r.conflicts(&n(1), Access::Write));
        assert!(r.conflicts(&n(2), Access::Write));
        assert!(!r.conflicts(&n(2), Access::Read));
        assert_eq!(r.generation(), 1);
    }

    #[test]
    fn access_matrix_matches_spc4_table() {
        // (type, registered other: read, write; unregistered other: read, write)
        let cases = [
            (PrType::ExclusiveAccess, [false, false, false, false]),
            (PrType::WriteExclusive, [true, false, true, false]),
            (
                PrType::ExclusiveAccessRegistrantsOnly,
                [true, true, false, false],
            ),
            (
                PrType::WriteExclusiveRegistrantsOnly,
                [true, true, true, false],
            ),
            (
                PrType::ExclusiveAccessAllRegistrants,
                [true, true, false, false],
            ),
            (
                PrType::WriteExclusiveAllRegistrants,
                [true, true, true, false],
            ),
        ];
        for (t, allowed) in cases {
            let mut r = Reservations::default();
            out(&mut r, 1, action::REGISTER, t, 0, 1).unwrap();
            out(&mut r, 2, action::REGISTER, t, 0, 2).unwrap();
            out(&mut r, 1, action::RESERVE, t, 1, 0).unwrap();
            let got = [
                !r.conflicts(&n(2), Access::Read),
                !r.conflicts(&n(2), Access::Write),
                !r.conflicts(&n(3), Access::Read),
                !r.conflicts(&n(3), Access::Write),
            ];
            assert_eq!(got, allowed, "{t:?}");
            assert!(!r.conflicts(&n(1), Access::Write), "{t:?}");
        }
    }

    #[test]
    fn wrong_key_or_unregistered_is_a_conflict() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 5).unwrap();
        assert_eq!(
            out(&mut r, 1, action::REGISTER, WE, 6, 7),
            Err(PrError::Conflict)
        );
        assert_eq!(
            out(&mut r, 2, action::RESERVE, WE, 0, 0),
            Err(PrError::Conflict)
        );
        assert_eq!(
            out(&mut r, 2, action::REGISTER, WE, 9, 1),
            Err(PrError::Conflict)
        );
        // REGISTER AND IGNORE EXISTING KEY replaces without the old key.
        out(&mut r, 1, action::REGISTER_AND_IGNORE, WE, 0, 8).unwrap();
        assert_eq!(r.read(0)[8..16], 8u64.to_be_bytes());
    }

    #[test]
    fn reserve_held_by_other_conflicts_and_same_type_is_idempotent() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        out(&mut r, 2, action::REGISTER, WE, 0, 2).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        assert_eq!(
            out(&mut r, 1, action::RESERVE, PrType::ExclusiveAccess, 1, 0),
            Err(PrError::Conflict)
        );
        assert_eq!(
            out(&mut r, 2, action::RESERVE, WE, 2, 0),
            Err(PrError::Conflict)
        );
    }

    #[test]
    fn release_with_wrong_type_is_invalid_release() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        assert_eq!(
            out(&mut r, 1, action::RELEASE, PrType::ExclusiveAccess, 1, 0),
            Err(PrError::Sense(Sense::illegal(
                Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
            )))
        );
        out(&mut r, 1, action::RELEASE, WE, 1, 0).unwrap();
        assert_eq!(r.read(1)[4..8], [0, 0, 0, 0]);
    }

    #[test]
    fn unregistering_the_holder_releases_the_reservation() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        out(&mut r, 1, action::REGISTER, WE, 1, 0).unwrap();
        assert!(!r.conflicts(&n(2), Access::Write));
    }

    #[test]
    fn preempt_takes_over_and_notifies_the_victim() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        out(&mut r, 2, action::REGISTER, WE, 0, 2).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        let e = out(
            &mut r,
            2,
            action::PREEMPT_AND_ABORT,
            PrType::ExclusiveAccess,
            2,
            1,
        )
        .unwrap();
        assert_eq!(
            e.unit_attentions,
            vec![(n(1), Asc::REGISTRATIONS_PREEMPTED)]
        );
        assert_eq!(e.aborted, vec![n(1)]);
        assert!(r.conflicts(&n(1), Access::Read));
        let rr = r.read(1);
        assert_eq!(rr[8..16], 2u64.to_be_bytes());
        assert_eq!(rr[21], PrType::ExclusiveAccess as u8);
    }

    #[test]
    fn preempt_of_unknown_key_conflicts_and_zero_key_is_invalid() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        assert_eq!(
            out(&mut r, 1, action::PREEMPT, WE, 1, 77),
            Err(PrError::Conflict)
        );
        assert_eq!(
            out(&mut r, 1, action::PREEMPT, WE, 1, 0),
            Err(PrError::Sense(Sense::invalid_param_field(8, None)))
        );
    }

    #[test]
    fn preempting_a_shared_key_keeps_the_issuers_registration() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 7).unwrap();
        out(&mut r, 2, action::REGISTER, WE, 0, 7).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 7, 0).unwrap();
        let e = out(&mut r, 1, action::PREEMPT, PrType::ExclusiveAccess, 7, 7).unwrap();
        assert_eq!(
            e.unit_attentions,
            vec![(n(2), Asc::REGISTRATIONS_PREEMPTED)]
        );
        assert_eq!(r.read(0)[4..8], 8u32.to_be_bytes()); // one key left
        assert!(!r.conflicts(&n(1), Access::Read));
        assert!(r.conflicts(&n(2), Access::Read));
    }

    #[test]
    fn preempt_all_registrants_with_zero_key_takes_over() {
        let mut r = Reservations::default();
        let ar = PrType::WriteExclusiveAllRegistrants;
        out(&mut r, 1, action::REGISTER, ar, 0, 1).unwrap();
        out(&mut r, 2, action::REGISTER, ar, 0, 2).unwrap();
        out(&mut r, 2, action::RESERVE, ar, 2, 0).unwrap();
        assert_eq!(r.read(1)[8..16], 0u64.to_be_bytes()); // AR reports key 0
        let e = out(&mut r, 1, action::PREEMPT, WE, 1, 0).unwrap();
        assert_eq!(
            e.unit_attentions,
            vec![(n(2), Asc::REGISTRATIONS_PREEMPTED)]
        );
        assert_eq!(r.read(1)[8..16], 1u64.to_be_bytes());
        assert_eq!(r.read(1)[21], WE as u8);
    }

    #[test]
    fn clear_removes_everything_and_notifies() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        out(&mut r, 2, action::REGISTER, WE, 0, 2).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        let e = out(&mut r, 2, action::CLEAR, WE, 2, 0).unwrap();
        assert_eq!(e.unit_attentions, vec![(n(1), Asc::RESERVATIONS_PREEMPTED)]);
        assert_eq!(r.read(0)[4..8], [0, 0, 0, 0]);
        assert!(!r.conflicts(&n(3), Access::Write));
    }

    #[test]
    fn bad_parameter_lists_are_refused() {
        let mut r = Reservations::default();
        assert_eq!(
            r.out(&n(1), 0, 0, 0, 23, &params(0, 1)),
            Err(PrError::Sense(Sense::parameter_list_length()))
        );
        let mut p = params(0, 1);
        p[20] = 0x01; // APTPL
        assert_eq!(
            r.out(&n(1), 0, 0, 0, 24, &p),
            Err(PrError::Sense(Sense::invalid_param_field(20, Some(0))))
        );
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        assert_eq!(
            r.out(&n(1), action::RESERVE, 0, 2, 24, &params(1, 0)),
            Err(PrError::Sense(Sense::invalid_cdb_field(2, Some(3))))
        );
        assert_eq!(
            r.out(&n(1), action::RESERVE, 1, 1, 24, &params(1, 0)),
            Err(PrError::Sense(Sense::invalid_cdb_field(2, Some(7))))
        );
    }

    #[test]
    fn registrations_are_bounded() {
        let mut r = Reservations::default();
        for i in 0..MAX_PR_REGISTRATIONS {
            let nx = Nexus::new(&format!("iqn.{i}"), 1);
            r.out(&nx, 0, 0, 0, 24, &params(0, 1)).unwrap();
        }
        let extra = Nexus::new("iqn.extra", 1);
        assert_eq!(
            r.out(&extra, 0, 0, 0, 24, &params(0, 1)),
            Err(PrError::Sense(Sense::illegal(
                Asc::INSUFFICIENT_REGISTRATION_RESOURCES
            )))
        );
    }

    #[test]
    fn full_status_lists_holder_and_transport_id() {
        let mut r = Reservations::default();
        out(&mut r, 1, action::REGISTER, WE, 0, 1).unwrap();
        out(&mut r, 1, action::RESERVE, WE, 1, 0).unwrap();
        let fs = r.read(3);
        assert_eq!(fs[8..16], 1u64.to_be_bytes());
        assert_eq!(fs[20], 1); // R_HOLDER
        assert_eq!(fs[21], WE as u8);
        assert_eq!(u16::from_be_bytes([fs[26], fs[27]]), 1); // relative target port
        let tid_len = u32::from_be_bytes([fs[28], fs[29], fs[30], fs[31]]) as usize;
        assert_eq!(fs.len(), 32 + tid_len);
        assert_eq!(fs[32], 0x45);
    }
}
