//! The rooms a token may read, as sorted disjoint ranges of room ids, so a
//! listing narrows to them by primary key *before* any filter touches a
//! document (a jsonpath evaluated on a room the caller cannot read would
//! make its errors and its cost an oracle on that room).
//!
//! Room ids are ASCII and compared bytewise (the column is `collate "C"`),
//! so every pattern is one half-open range:
//! - an exact id `x` is `[x, x\u{1})` — every longer id starting with `x`
//!   continues with a room-id byte, all of which sort after `\u{1}`;
//! - a prefix `p` is `[p, p')` where `p'` is `p` with its last byte raised
//!   by one (room-id bytes stop at `z`, so `p'` is still ASCII);
//! - `*` is everything.

use super::claims::{Action, Permissions, RoomPattern};

/// A half-open range of room ids; `hi: None` is unbounded above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRange {
    pub lo: String,
    pub hi: Option<String>,
}

impl IdRange {
    fn of(pattern: &RoomPattern) -> Self {
        match pattern {
            RoomPattern::Exact(id) => Self {
                lo: id.clone(),
                hi: Some(format!("{id}\u{1}")),
            },
            RoomPattern::Prefix(prefix) => Self::prefix(prefix),
        }
    }

    /// Every id starting with `prefix` (ASCII).
    pub fn prefix(prefix: &str) -> Self {
        let mut hi = prefix.as_bytes().to_vec();
        let hi = match hi.pop() {
            None => None,
            Some(last) => {
                hi.push(last + 1);
                Some(String::from_utf8(hi).expect("an ASCII prefix stays ASCII"))
            }
        };
        Self {
            lo: prefix.to_owned(),
            hi,
        }
    }

    fn below_hi(&self, id: &str) -> bool {
        self.hi.as_deref().is_none_or(|hi| id < hi)
    }

    fn intersect(&self, other: &Self) -> Option<Self> {
        let lo = self.lo.clone().max(other.lo.clone());
        let hi = match (&self.hi, &other.hi) {
            (Some(a), Some(b)) => Some(a.clone().min(b.clone())),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        let range = Self { lo, hi };
        range.below_hi(&range.lo).then_some(range)
    }
}

/// Sorted, disjoint ranges of room ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomRanges(Vec<IdRange>);

impl RoomRanges {
    /// The rooms on which `permissions` allow `action`.
    pub fn allowed(permissions: &Permissions, action: Action) -> Self {
        if permissions.admin {
            return Self(vec![IdRange::prefix("")]);
        }
        let ranges = permissions
            .patterns_for(action)
            .map(IdRange::of)
            .collect::<Vec<_>>();
        Self::merged(ranges)
    }

    fn merged(mut ranges: Vec<IdRange>) -> Self {
        ranges.sort_by(|a, b| a.lo.cmp(&b.lo));
        let mut merged: Vec<IdRange> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                // Overlapping or touching: extend the previous range.
                Some(last) if last.hi.as_deref().is_none_or(|hi| range.lo.as_str() <= hi) => {
                    last.hi = match (&last.hi, range.hi) {
                        (Some(a), Some(b)) => Some(a.clone().max(b)),
                        _ => None,
                    };
                }
                _ => merged.push(range),
            }
        }
        Self(merged)
    }

    /// Only the part inside `range`.
    pub fn within(&self, range: &IdRange) -> Self {
        Self(self.0.iter().filter_map(|r| r.intersect(range)).collect())
    }

    /// Only ids strictly after `id` (a page cursor).
    pub fn after(&self, id: &str) -> Self {
        self.within(&IdRange {
            lo: format!("{id}\u{1}"),
            hi: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[IdRange] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MetacastClaim;

    fn permissions(rooms: &[(&str, &[&str])]) -> Permissions {
        let claim = MetacastClaim {
            rooms: rooms
                .iter()
                .map(|(p, a)| (p.to_string(), a.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ..MetacastClaim::default()
        };
        Permissions::from_claim(&claim).unwrap()
    }

    fn contains(ranges: &RoomRanges, id: &str) -> bool {
        ranges
            .ranges()
            .iter()
            .any(|r| r.lo.as_str() <= id && r.below_hi(id))
    }

    #[test]
    fn ranges_hold_exactly_the_readable_rooms() {
        let p = permissions(&[
            ("lobby", &["read"]),
            ("team-*", &["read"]),
            ("a*", &["read"]),
            ("a1", &["read", "join"]),
            ("x", &["join"]),
        ]);
        let ranges = RoomRanges::allowed(&p, Action::Read);
        // `a1` lies inside `a*`: merged into one range.
        assert_eq!(ranges.ranges().len(), 3, "{ranges:?}");
        for id in ["lobby", "team-", "team-1", "a", "a1", "azz", "a_3"] {
            assert!(contains(&ranges, id), "{id}");
        }
        for id in ["lobby2", "lobbx", "team", "teams-1", "b", "x", "z", "A"] {
            assert!(!contains(&ranges, id), "{id}");
        }
    }

    #[test]
    fn no_grant_is_no_range_and_star_is_everything() {
        let none = permissions(&[("r1", &["join"])]);
        assert!(RoomRanges::allowed(&none, Action::Read).is_empty());
        let all = RoomRanges::allowed(&permissions(&[("*", &["read"])]), Action::Read);
        assert_eq!(all.ranges(), [IdRange::prefix("")]);
        assert!(contains(&all, "zzz"));
    }

    #[test]
    fn prefix_and_cursor_narrow_the_ranges() {
        let p = permissions(&[("team-*", &["read"]), ("lobby", &["read"])]);
        let ranges = RoomRanges::allowed(&p, Action::Read);
        let teams = ranges.within(&IdRange::prefix("team-1"));
        assert!(contains(&teams, "team-1") && contains(&teams, "team-10"));
        assert!(!contains(&teams, "team-2") && !contains(&teams, "lobby"));
        assert!(ranges.within(&IdRange::prefix("z")).is_empty());
        assert!(ranges.within(&IdRange::prefix("lobby")).ranges().len() == 1);
        let after = ranges.after("lobby");
        assert!(!contains(&after, "lobby"));
        assert!(contains(&after, "team-0"));
        assert!(ranges.after("team-").ranges().len() == 1);
        assert!(contains(&ranges.after("team-"), "team-."));
        assert!(ranges.after("team.").is_empty());
    }
}
