//! The deterministic data set (§8.2) and its precomputed views.
//!
//! Guarantees:
//! - The data set is a pure function of (seed, sims, tags, start, hours, activity, shape):
//!   every random choice is `rnd(label, ints...) = splitmix64(seed ^ fnv1a64(label, ints))`,
//!   with FNV-1a 64 over the label's UTF-8 bytes followed by each integer as 8 little-endian
//!   bytes. Nothing depends on process state (no `RandomState`, no thread timing).
//! - Each view (raw sessions, hourly sums) is sorted `time` desc, `sim_id` asc, then a
//!   tie-breaker (session `k` for raw; country then network table index for hourly), which
//!   makes the order total and stable. Session times are whole seconds, as the real API
//!   writes them, so the order is the one a client sees.
//! - Records have the real API's shape (upstream-api.md §4.3): `time` as
//!   `YYYY-MM-DD HH:MM:SS`, `bill_id`, `sim_id`, `iccid`, `session_id`, `bytes`,
//!   `country_code`, `network_type`, `network: {mcc, mnc}`. Hourly sums (`group=hours`) have
//!   the same fields but `bill_id` and `session_id`, which name one session (a GUESS).
//! - Every record's JSON is serialized once at startup into one buffer, records separated by
//!   `,`, so a page is built by copying runs of that buffer.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::calendar::{write_iso_ms, write_plain_secs, MS_PER_HOUR};
use crate::options::RecordShape;
use crate::random::{rnd, unit};

/// One row of the fixed country and network table.
#[derive(Debug)]
pub(crate) struct Country {
    pub code: &'static str,
    pub name: &'static str,
    pub mcc: &'static str,
    /// Weight (out of 100) as a SIM's home country.
    pub weight: u64,
    /// `(network name, mnc)`.
    pub networks: &'static [(&'static str, &'static str)],
}

pub(crate) const COUNTRIES: [Country; 8] = [
    Country {
        code: "dk",
        name: "Denmark",
        mcc: "238",
        weight: 40,
        networks: &[("TDC", "01"), ("Telenor", "02"), ("Telia", "20")],
    },
    Country {
        code: "de",
        name: "Germany",
        mcc: "262",
        weight: 15,
        networks: &[("Telekom", "01"), ("Vodafone", "02")],
    },
    Country {
        code: "se",
        name: "Sweden",
        mcc: "240",
        weight: 10,
        networks: &[("Telia", "01"), ("Tele2", "07")],
    },
    Country {
        code: "gb",
        name: "United Kingdom",
        mcc: "234",
        weight: 10,
        networks: &[("O2", "10"), ("Vodafone", "15")],
    },
    Country {
        code: "nl",
        name: "Netherlands",
        mcc: "204",
        weight: 8,
        networks: &[("KPN", "08"), ("Vodafone", "04")],
    },
    Country {
        code: "us",
        name: "United States",
        mcc: "310",
        weight: 7,
        networks: &[("AT&T", "410"), ("T-Mobile", "260")],
    },
    Country {
        code: "fr",
        name: "France",
        mcc: "208",
        weight: 5,
        networks: &[("Orange", "01")],
    },
    Country {
        code: "es",
        name: "Spain",
        mcc: "214",
        weight: 5,
        networks: &[("Movistar", "07")],
    },
];

/// Radio access technologies (`network_type`) and their weights out of 100.
const NETWORK_TYPES: [(&str, u64); 4] = [("2G", 10), ("3G", 15), ("4G", 65), ("5G", 10)];

/// The `network_type` a SIM gets on one network: fixed per SIM and network, so hourly sums
/// per network keep one (the recorded answer shows one SIM on 4G and 3G networks in a day).
fn network_type(seed: u64, sim: u32, country: u8, net: u8) -> &'static str {
    let total: u64 = NETWORK_TYPES.iter().map(|(_, w)| w).sum();
    let mut r = rnd(
        seed,
        "rat",
        &[u64::from(sim), u64::from(country), u64::from(net)],
    ) % total;
    for (name, weight) in NETWORK_TYPES {
        if r < weight {
            return name;
        }
        r -= weight;
    }
    "4G"
}

/// Index into `COUNTRIES` of a lower-case two-letter code.
pub(crate) fn country_index(code: [u8; 2]) -> Option<u8> {
    COUNTRIES
        .iter()
        .position(|c| c.code.as_bytes() == code)
        .and_then(|i| u8::try_from(i).ok())
}

/// A generated SIM.
#[derive(Debug)]
pub(crate) struct Sim {
    pub sim_id: String,
    pub iccid: String,
    pub home: u8,
    /// Tag indices, ascending, distinct.
    pub tags: Vec<u16>,
}

/// A generated tag.
#[derive(Debug)]
pub(crate) struct Tag {
    pub id: String,
}

/// One usage record of a view. `sim` is the SIM index (sim_id - 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rec {
    pub time_ms: i64,
    pub sim: u32,
    /// Session number for raw records, 0 for hourly records.
    pub k: u8,
    pub country: u8,
    pub net: u8,
    pub bytes: u64,
}

/// A sorted list of records plus their pre-serialized JSON and a per-SIM index.
#[derive(Debug)]
pub(crate) struct View {
    pub recs: Vec<Rec>,
    /// Records serialized in view order, separated by `,`.
    pub json: Bytes,
    /// `starts[i]` is where record `i` begins in `json`; `starts[n] = json.len() + 1`, so
    /// records `i..j` are `json[starts[i]..starts[j] - 1]` including the separating commas.
    pub starts: Vec<usize>,
    /// For each SIM, the view positions of its records, ascending.
    pub by_sim: Vec<Vec<u32>>,
}

/// How a view's records are written: the generator's seed and start (for the ids derived per
/// session), the shape, and whether they are hourly sums.
#[derive(Debug, Clone, Copy)]
struct Format {
    seed: u64,
    start_ms: i64,
    shape: RecordShape,
    hourly: bool,
}

impl View {
    fn build(mut recs: Vec<Rec>, sims: &[Sim], format: Format) -> View {
        recs.sort_unstable_by(|a, b| {
            b.time_ms
                .cmp(&a.time_ms)
                .then(a.sim.cmp(&b.sim))
                .then(a.k.cmp(&b.k))
                .then(a.country.cmp(&b.country))
                .then(a.net.cmp(&b.net))
        });
        let per_record = match format.shape {
            RecordShape::Onomondo => 280,
            RecordShape::Derived => 80,
        };
        let mut json = String::with_capacity(recs.len() * per_record);
        let mut starts = Vec::with_capacity(recs.len() + 1);
        let mut by_sim = vec![Vec::new(); sims.len()];
        for (pos, rec) in recs.iter().enumerate() {
            if pos > 0 {
                json.push(',');
            }
            starts.push(json.len());
            write_record(&mut json, rec, &sims[rec.sim as usize], format);
            let pos = u32::try_from(pos).expect("a view holds fewer than 2^32 records");
            by_sim[rec.sim as usize].push(pos);
        }
        starts.push(json.len() + 1);
        View {
            recs,
            json: Bytes::from(json),
            starts,
            by_sim,
        }
    }

    /// The JSON of records `from..to` (view positions), commas included.
    pub fn run(&self, from: usize, to: usize) -> &[u8] {
        &self.json[self.starts[from]..self.starts[to] - 1]
    }

    /// View positions whose time lies in `[start_ms, end_ms)`, as a half-open range.
    pub fn time_range(&self, start_ms: i64, end_ms: i64) -> (usize, usize) {
        let lo = self.recs.partition_point(|r| r.time_ms >= end_ms);
        let hi = self.recs.partition_point(|r| r.time_ms >= start_ms);
        (lo, hi.max(lo))
    }
}

fn write_record(out: &mut String, rec: &Rec, sim: &Sim, format: Format) {
    let country = &COUNTRIES[rec.country as usize];
    let (_, mnc) = country.networks[rec.net as usize];
    match format.shape {
        RecordShape::Onomondo => {
            out.push_str("{\"time\":\"");
            write_plain_secs(out, rec.time_ms);
            if !format.hourly {
                // A session's bill and session ids, drawn like everything else.
                let hour = (rec.time_ms - format.start_ms).div_euclid(MS_PER_HOUR) as u64;
                let ints = [u64::from(rec.sim), hour, u64::from(rec.k)];
                out.push_str("\",\"bill_id\":\"");
                out.push_str(&record_uuid(format.seed, "bill", &ints));
                out.push_str("\",\"sim_id\":\"");
                out.push_str(&sim.sim_id);
                out.push_str("\",\"iccid\":\"");
                out.push_str(&sim.iccid);
                out.push_str("\",\"session_id\":\"");
                out.push_str(&record_uuid(format.seed, "session", &ints));
            } else {
                out.push_str("\",\"sim_id\":\"");
                out.push_str(&sim.sim_id);
                out.push_str("\",\"iccid\":\"");
                out.push_str(&sim.iccid);
            }
            out.push_str("\",\"bytes\":");
            write_u64(out, rec.bytes);
            out.push_str(",\"country_code\":\"");
            out.push_str(country.code);
            out.push_str("\",\"network_type\":\"");
            out.push_str(network_type(format.seed, rec.sim, rec.country, rec.net));
            out.push_str("\",\"network\":{\"mcc\":\"");
            out.push_str(country.mcc);
            out.push_str("\",\"mnc\":\"");
            out.push_str(mnc);
            out.push_str("\"}}");
        }
        RecordShape::Derived => {
            out.push_str("{\"sim_id\":\"");
            out.push_str(&sim.sim_id);
            out.push_str("\",\"bytes\":");
            write_u64(out, rec.bytes);
            out.push_str(",\"timestamp\":\"");
            write_iso_ms(out, rec.time_ms);
            out.push_str("\"}");
        }
    }
}

fn write_u64(out: &mut String, v: u64) {
    // Writing into a String cannot fail.
    let _ = write!(out, "{v}");
}

/// Parameters of the generator (the data-relevant subset of `SimOptions`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenParams {
    pub seed: u64,
    pub sims: u32,
    pub tags: u32,
    pub start_ms: i64,
    pub hours: u32,
    pub activity: f64,
    pub shape: RecordShape,
}

/// The whole generated data set.
#[derive(Debug)]
pub(crate) struct Data {
    pub start_ms: i64,
    pub hours: u32,
    pub sims: Vec<Sim>,
    pub tags: Vec<Tag>,
    /// For each tag, its SIM indices ascending.
    pub sims_of_tag: Vec<Vec<u32>>,
    pub raw: View,
    pub hourly: View,
}

/// Luhn check digit for a string of ASCII digits.
pub(crate) fn luhn_digit(digits: &str) -> u8 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

pub(crate) fn iccid_of(sim_number: u32) -> String {
    let body = format!("894573873{sim_number:010}");
    let check = luhn_digit(&body);
    format!("{body}{check}")
}

/// A UUIDv4 (lower case) built from two draws of `rnd("tagid", t, half)`.
fn tag_uuid(seed: u64, t: u64) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&rnd(seed, "tagid", &[t, 0]).to_be_bytes());
    b[8..].copy_from_slice(&rnd(seed, "tagid", &[t, 1]).to_be_bytes());
    uuid_text(b, 4)
}

/// A record's `bill_id` or `session_id`: a UUID with the version nibble 3, like the ones in
/// the recorded answer, from two draws of `rnd(label, ints..., half)`.
fn record_uuid(seed: u64, label: &str, ints: &[u64; 3]) -> String {
    let [a, b, c] = *ints;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rnd(seed, label, &[a, b, c, 0]).to_be_bytes());
    bytes[8..].copy_from_slice(&rnd(seed, label, &[a, b, c, 1]).to_be_bytes());
    uuid_text(bytes, 3)
}

/// The hyphenated lower-case text of a UUID with `version` and the RFC 9562 variant set.
fn uuid_text(mut b: [u8; 16], version: u8) -> String {
    b[6] = (b[6] & 0x0f) | (version << 4);
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn pick_home(seed: u64, i: u64) -> u8 {
    let total: u64 = COUNTRIES.iter().map(|c| c.weight).sum();
    let mut r = rnd(seed, "home", &[i]) % total;
    for (idx, c) in COUNTRIES.iter().enumerate() {
        if r < c.weight {
            return idx as u8;
        }
        r -= c.weight;
    }
    0
}

fn generate_sims(p: &GenParams) -> Vec<Sim> {
    (0..u64::from(p.sims))
        .map(|i| {
            let number = u32::try_from(i + 1).expect("sims is a u32");
            let mut tags: Vec<u16> = Vec::new();
            if p.tags > 0 {
                let count = rnd(p.seed, "tags", &[i]) % 3;
                for k in 0..count {
                    let t = rnd(p.seed, "tag", &[i, k]) % u64::from(p.tags);
                    tags.push(u16::try_from(t).expect("tag count is validated to fit u16"));
                }
                tags.sort_unstable();
                tags.dedup();
            }
            Sim {
                sim_id: format!("{number:09}"),
                iccid: iccid_of(number),
                home: pick_home(p.seed, i),
                tags,
            }
        })
        .collect()
}

/// Generates the sessions of one SIM-hour, pushing raw records and their hourly sums.
fn generate_hour(
    p: &GenParams,
    sim: &Sim,
    i: u64,
    h: u64,
    raw: &mut Vec<Rec>,
    hourly: &mut Vec<Rec>,
) {
    let seed = p.seed;
    let sessions = 1 + rnd(seed, "n", &[i, h]) % 4;
    let hour_ms = p.start_ms + h as i64 * MS_PER_HOUR;
    let hourly_from = hourly.len();
    let others = (COUNTRIES.len() - 1) as u64;
    for k in 0..sessions {
        let roaming = unit(rnd(seed, "away", &[i, h, k])) < 0.1;
        let country = if roaming {
            let c = (rnd(seed, "roam", &[i, h, k]) % others) as u8;
            if c >= sim.home {
                c + 1
            } else {
                c
            }
        } else {
            sim.home
        };
        let nets = COUNTRIES[country as usize].networks.len() as u64;
        let net = (rnd(seed, "net", &[i, h, k]) % nets) as u8;
        let u = unit(rnd(seed, "b", &[i, h, k]));
        let bytes = 64 + (6.0 + 5.0 * u).exp().floor() as u64;
        // Whole seconds: the real API writes `time` without milliseconds.
        let time_ms = hour_ms + (rnd(seed, "t", &[i, h, k]) % 3600) as i64 * 1000;
        let sim_index = u32::try_from(i).expect("sims is a u32");
        raw.push(Rec {
            time_ms,
            sim: sim_index,
            k: k as u8,
            country,
            net,
            bytes,
        });
        match hourly[hourly_from..]
            .iter_mut()
            .find(|r| r.country == country && r.net == net)
        {
            Some(sum) => sum.bytes += bytes,
            None => hourly.push(Rec {
                time_ms: hour_ms,
                sim: sim_index,
                k: 0,
                country,
                net,
                bytes,
            }),
        }
    }
}

impl Data {
    pub fn generate(p: &GenParams) -> Data {
        let sims = generate_sims(p);
        let tags: Vec<Tag> = (0..u64::from(p.tags))
            .map(|t| Tag {
                id: tag_uuid(p.seed, t),
            })
            .collect();
        let mut sims_of_tag = vec![Vec::new(); tags.len()];
        for (i, sim) in sims.iter().enumerate() {
            for &t in &sim.tags {
                sims_of_tag[t as usize].push(u32::try_from(i).expect("sims is a u32"));
            }
        }
        let expected = (f64::from(p.sims) * f64::from(p.hours) * p.activity * 2.6) as usize;
        let mut raw = Vec::with_capacity(expected);
        let mut hourly = Vec::with_capacity(expected / 2);
        for (i, sim) in sims.iter().enumerate() {
            let i = i as u64;
            for h in 0..u64::from(p.hours) {
                if unit(rnd(p.seed, "act", &[i, h])) < p.activity {
                    generate_hour(p, sim, i, h, &mut raw, &mut hourly);
                }
            }
        }
        let format = |hourly| Format {
            seed: p.seed,
            start_ms: p.start_ms,
            shape: p.shape,
            hourly,
        };
        let raw = View::build(raw, &sims, format(false));
        let hourly = View::build(hourly, &sims, format(true));
        Data {
            start_ms: p.start_ms,
            hours: p.hours,
            sims,
            tags,
            sims_of_tag,
            raw,
            hourly,
        }
    }

    /// SIM index for a path segment that is either a 9-digit sim_id or a 20-digit ICCID.
    pub fn find_sim(&self, id: &str) -> Option<u32> {
        let all_digits = id.bytes().all(|b| b.is_ascii_digit());
        if !all_digits {
            return None;
        }
        let number: u32 = match id.len() {
            9 => id.parse().ok()?,
            20 if id.starts_with("894573873") => {
                let n: u32 = id[9..19].parse().ok()?;
                if iccid_of(n) != id {
                    return None;
                }
                n
            }
            _ => return None,
        };
        let index = number.checked_sub(1)?;
        ((index as usize) < self.sims.len()).then_some(index)
    }

    /// Tag index for a UUID path segment (compared case-insensitively).
    pub fn find_tag(&self, id: &str) -> Option<u16> {
        self.tags
            .iter()
            .position(|t| t.id.eq_ignore_ascii_case(id))
            .and_then(|i| u16::try_from(i).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> GenParams {
        GenParams {
            seed,
            sims: 20,
            tags: 4,
            start_ms: 1_704_067_200_000,
            hours: 48,
            activity: 0.5,
            shape: RecordShape::Onomondo,
        }
    }

    #[test]
    fn iccids_carry_a_valid_luhn_digit() {
        assert_eq!(luhn_digit("7992739871"), 3);
        let iccid = iccid_of(7);
        assert_eq!(iccid.len(), 20);
        assert!(iccid.starts_with("8945738730000000007"));
    }

    #[test]
    fn tag_ids_are_version_4_uuids() {
        let id = tag_uuid(1, 0);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn generation_is_a_pure_function_of_the_parameters() {
        let a = Data::generate(&small(1));
        let b = Data::generate(&small(1));
        let c = Data::generate(&small(2));
        assert_eq!(a.raw.json, b.raw.json);
        assert_ne!(a.raw.json, c.raw.json);
    }

    #[test]
    fn views_are_sorted_time_desc_then_sim_asc() {
        let d = Data::generate(&small(3));
        for w in d.raw.recs.windows(2) {
            let key = |r: &Rec| (std::cmp::Reverse(r.time_ms), r.sim, r.k);
            assert!(key(&w[0]) < key(&w[1]));
        }
        for r in &d.hourly.recs {
            assert_eq!(r.time_ms % MS_PER_HOUR, 0);
        }
    }

    #[test]
    fn hourly_sums_equal_raw_sums() {
        let d = Data::generate(&small(4));
        let raw: u64 = d.raw.recs.iter().map(|r| r.bytes).sum();
        let hourly: u64 = d.hourly.recs.iter().map(|r| r.bytes).sum();
        assert_eq!(raw, hourly);
    }

    #[test]
    fn pre_serialized_records_are_valid_json_in_view_order() {
        let d = Data::generate(&small(5));
        let all = d.raw.run(0, d.raw.recs.len());
        let text = format!("[{}]", std::str::from_utf8(all).expect("utf-8"));
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid json");
        assert_eq!(parsed.len(), d.raw.recs.len());
        let one = d.raw.run(1, 2);
        let rec: serde_json::Value = serde_json::from_slice(one).expect("one record");
        assert_eq!(rec, parsed[1]);
    }

    #[test]
    fn records_have_the_shape_of_the_recorded_answer() {
        let d = Data::generate(&small(7));
        let text = std::str::from_utf8(d.raw.run(0, 1)).expect("UTF-8");
        let rec: serde_json::Value = serde_json::from_str(text).expect("a record");
        // The fields, in the recorded answer's order.
        let at: Vec<usize> = [
            "time",
            "bill_id",
            "sim_id",
            "iccid",
            "session_id",
            "bytes",
            "country_code",
            "network_type",
            "network",
        ]
        .iter()
        .map(|key| text.find(&format!("\"{key}\":")).expect(key))
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(rec.as_object().map(|o| o.len()), Some(9), "{text}");
        let time = rec["time"].as_str().expect("time");
        assert_eq!(time.len(), 19, "{time}");
        assert_eq!(&time[10..11], " ");
        for id in ["bill_id", "session_id"] {
            let uuid = rec[id].as_str().expect("uuid");
            assert_eq!((uuid.len(), &uuid[14..15]), (36, "3"), "{uuid}");
        }
        assert_ne!(rec["bill_id"], rec["session_id"]);
        assert!(matches!(
            rec["network_type"].as_str(),
            Some("2G" | "3G" | "4G" | "5G")
        ));
        assert_eq!(
            rec["network"].as_object().map(|n| n.len()),
            Some(2),
            "{rec}"
        );
        let hourly: serde_json::Value =
            serde_json::from_slice(d.hourly.run(0, 1)).expect("a record");
        assert!(hourly["time"]
            .as_str()
            .is_some_and(|t| t.ends_with(":00:00")));
        assert!(hourly.get("session_id").is_none() && hourly.get("bill_id").is_none());
    }

    #[test]
    fn sims_are_found_by_id_or_iccid() {
        let d = Data::generate(&small(6));
        assert_eq!(d.find_sim("000000001"), Some(0));
        assert_eq!(d.find_sim(&iccid_of(3)), Some(2));
        assert_eq!(d.find_sim("000000000"), None);
        assert_eq!(d.find_sim("000000021"), None);
        assert_eq!(d.find_sim("1"), None);
    }
}
