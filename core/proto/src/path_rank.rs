//! Which path ranks first: one comparator (like Tailscale magicsock's `betterAddr`), used by the scheduler
//! to pick the paths it may use and by status to name a peer's best path. Everything a path's route says
//! about preference is here; scheduler, reorder, health and congestion code never ask how a path was found.
//!
//! A path's route: the kind of path (`Direct` today; `Punched` and `Relayed` for the mesh) and whether it
//! leaves from a backup WAN. Among paths that rank equal, the scheduler's mode decides by RTT and queue
//! (earliest arrival), so RTT is deliberately not a rule here: rank says which paths may carry traffic,
//! the mode says how to spread it over them.

use std::cmp::Ordering;

/// How a path reaches the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Our socket straight to an endpoint the peer listens on (configured or reported).
    #[default]
    Direct,
    /// Both sides sent from the sockets that own their NAT mappings at once (simultaneous open).
    Punched,
    /// Opaque QUIC packets forwarded by another member, named by its node key.
    Relayed { via: [u8; 32] },
}

impl PathKind {
    /// Lower is better: a path with fewer parties in it is faster, costs no one else's bandwidth and does
    /// not fail when a third node does. A punched path is direct on the wire and ranks with the direct
    /// ones: a site with a public WAN and a NATed one reaches a peer by a plain dial on the first and a
    /// punch on the second, and its bond must use both (its mappings are kept open by the path's own
    /// probes, and a path whose mapping expires goes down like any other).
    fn hops(&self) -> u8 {
        match self {
            PathKind::Direct | PathKind::Punched => 0,
            PathKind::Relayed { .. } => 1,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Punched => "punched",
            PathKind::Relayed { .. } => "relayed",
        }
    }
}

/// What ranking needs to know of a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRank {
    pub up: bool,
    /// Either end's WAN is a backup (metered, or only for when every primary fails).
    pub backup: bool,
    pub kind: PathKind,
}

/// Orders two paths: `Less` if `a` ranks before `b`, `Equal` if neither is preferred (the scheduler may
/// use both). Rules, first difference wins:
pub fn compare(a: &PathRank, b: &PathRank) -> Ordering {
    // 1. A path that is up before one that is down: a down path carries nothing whatever its route.
    b.up.cmp(&a.up)
        // 2. A primary WAN before a backup WAN, even when the primary path is relayed: a backup is metered
        //    (LTE) or there for failures only, and a relay over a working primary costs neither.
        .then(a.backup.cmp(&b.backup))
        // 3. Fewer hops first: direct or punched, then relayed (see `PathKind::hops`).
        .then(a.kind.hops().cmp(&b.kind.hops()))
}

/// Indices of the paths the scheduler may use: those that are up and rank equal to the best one.
pub fn usable(ranks: &[PathRank]) -> Vec<usize> {
    let Some(best) = ranks.iter().filter(|r| r.up).min_by(|a, b| compare(a, b)) else {
        return Vec::new();
    };
    (0..ranks.len()).filter(|&i| ranks[i].up && compare(&ranks[i], best) == Ordering::Equal).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: [u8; 32] = [7; 32];

    fn rank(up: bool, backup: bool, kind: PathKind) -> PathRank {
        PathRank { up, backup, kind }
    }

    #[test]
    fn direct_and_punched_alike_before_relayed_on_the_same_wan() {
        let direct = rank(true, false, PathKind::Direct);
        let punched = rank(true, false, PathKind::Punched);
        let relayed = rank(true, false, PathKind::Relayed { via: RELAY });
        assert_eq!(compare(&direct, &punched), Ordering::Equal);
        assert_eq!(compare(&punched, &relayed), Ordering::Less);
        assert_eq!(compare(&relayed, &direct), Ordering::Greater);
        // A bond with a plain direct path on one WAN and a punched one on another uses both.
        assert_eq!(usable(&[relayed, direct, punched, direct]), vec![1, 2, 3]);
    }

    #[test]
    fn primary_wan_before_backup_wan_even_relayed() {
        let relayed_primary = rank(true, false, PathKind::Relayed { via: RELAY });
        let direct_backup = rank(true, true, PathKind::Direct);
        assert_eq!(compare(&relayed_primary, &direct_backup), Ordering::Less);
        assert_eq!(usable(&[direct_backup, relayed_primary]), vec![1]);
        // Without a primary the backup carries traffic.
        assert_eq!(usable(&[direct_backup, rank(false, false, PathKind::Direct)]), vec![0]);
    }

    #[test]
    fn a_down_path_ranks_last_and_is_never_usable() {
        let down_direct = rank(false, false, PathKind::Direct);
        let up_relayed_backup = rank(true, true, PathKind::Relayed { via: RELAY });
        assert_eq!(compare(&up_relayed_backup, &down_direct), Ordering::Less);
        assert_eq!(usable(&[down_direct]), Vec::<usize>::new());
        assert_eq!(usable(&[]), Vec::<usize>::new());
    }

    #[test]
    fn equal_routes_are_all_usable_whoever_relays() {
        // The relay's identity is not a preference: two relayed primaries rank equal.
        let a = rank(true, false, PathKind::Relayed { via: RELAY });
        let b = rank(true, false, PathKind::Relayed { via: [9; 32] });
        assert_eq!(compare(&a, &b), Ordering::Equal);
        assert_eq!(usable(&[a, b]), vec![0, 1]);
    }
}
