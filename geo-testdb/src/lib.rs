//! A small MaxMind DB (MMDB v2) writer, for the country databases of the
//! tests, the benchmarks and `cascade dev` (built from a CSV of
//! `CIDR,country`). Not a part of serving: the `geo` library only reads. Hand-written because the writer crates on
//! crates.io are young (0.1.x); the format is small, and every database this
//! writes is read back with the `maxminddb` crate in the tests.
//!
//! It writes an IPv6 tree (IPv4 networks under `::/96`) with 24-bit records,
//! and records of the GeoIP2 Country shape: `{country: {iso_code}}`.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a database could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A line of the CSV is not `CIDR,CC`.
    #[error("line {0}: expected CIDR,country (two letters)")]
    Line(usize),
    /// Two networks overlap.
    #[error("line {0}: the network overlaps an earlier one")]
    Overlap(usize),
    /// More nodes than 24-bit records can address.
    #[error("too many networks for this writer")]
    TooLarge,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Child {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds an MMDB file from `CIDR,CC` lines (`#` comments and blank lines skipped).
pub fn build_from_csv(csv: &str, build_epoch: u64) -> Result<Vec<u8>, WriteError> {
    let mut entries = Vec::new();
    for (i, line) in csv.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (cidr, cc) = line.split_once(',').ok_or(WriteError::Line(i + 1))?;
        let net: IpNet = cidr.trim().parse().map_err(|_| WriteError::Line(i + 1))?;
        let cc = cc.trim();
        if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(WriteError::Line(i + 1));
        }
        entries.push((i + 1, net, cc.to_string()));
    }
    build(&entries, build_epoch)
}

fn bits(net: &IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(n) => (u128::from(u32::from(n.network())), 96 + n.prefix_len()),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
    }
}

fn build(entries: &[(usize, IpNet, String)], build_epoch: u64) -> Result<Vec<u8>, WriteError> {
    // The tree: node 0 is the root.
    let mut nodes: Vec<[Child; 2]> = vec![[Child::Empty; 2]];
    let mut data: Vec<String> = Vec::new();
    for (line, net, cc) in entries {
        let (addr, len) = bits(net);
        if len == 0 {
            return Err(WriteError::Line(*line));
        }
        let value = data.iter().position(|d| d == cc).unwrap_or_else(|| {
            data.push(cc.clone());
            data.len() - 1
        });
        let mut node = 0usize;
        for depth in 0..len {
            let bit = ((addr >> (127 - depth)) & 1) as usize;
            let last = depth + 1 == len;
            match nodes[node][bit] {
                Child::Data(_) => return Err(WriteError::Overlap(*line)),
                Child::Node(_) if last => return Err(WriteError::Overlap(*line)),
                Child::Node(n) => node = n,
                Child::Empty if last => nodes[node][bit] = Child::Data(value),
                Child::Empty => {
                    nodes.push([Child::Empty; 2]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Child::Node(n);
                    node = n;
                }
            }
        }
    }
    if nodes.len() >= (1 << 23) {
        return Err(WriteError::TooLarge);
    }
    // The data section: one record per country, remembering offsets.
    let mut section = Vec::new();
    let mut offsets = Vec::with_capacity(data.len());
    for cc in &data {
        offsets.push(section.len());
        map_header(&mut section, 1);
        string(&mut section, "country");
        map_header(&mut section, 1);
        string(&mut section, "iso_code");
        string(&mut section, cc);
    }
    let node_count = nodes.len();
    let mut out = Vec::with_capacity(node_count * 6 + 16 + section.len() + 512);
    for n in &nodes {
        for child in n {
            let v = match *child {
                Child::Empty => node_count,
                Child::Node(i) => i,
                Child::Data(d) => node_count + 16 + offsets[d],
            };
            if v >= 1 << 24 {
                return Err(WriteError::TooLarge);
            }
            out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&section);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    map_header(&mut out, 9);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0);
    string(&mut out, "build_epoch");
    uint(&mut out, 9, build_epoch);
    string(&mut out, "database_type");
    string(&mut out, "Cascade-Test-Country");
    string(&mut out, "description");
    map_header(&mut out, 1);
    string(&mut out, "en");
    string(&mut out, "TEST DATA ONLY: not real geolocation");
    string(&mut out, "ip_version");
    uint(&mut out, 5, 6);
    string(&mut out, "languages");
    array_header(&mut out, 1);
    string(&mut out, "en");
    string(&mut out, "node_count");
    uint(&mut out, 6, node_count as u64);
    string(&mut out, "record_size");
    uint(&mut out, 5, 24);
    Ok(out)
}

/// A control byte (type and size), the extended type byte for types above
/// 7, then the longer size bytes for sizes of 29 and more.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (small, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        _ => {
            let rest = (size.min(65_820) - 285) as u16;
            (30, rest.to_be_bytes().to_vec())
        }
    };
    if kind <= 7 {
        out.push((kind << 5) | small);
    } else {
        out.push(small);
        out.push(kind - 7);
    }
    out.extend_from_slice(&extra);
}

fn map_header(out: &mut Vec<u8>, entries: usize) {
    control(out, 7, entries);
}

fn array_header(out: &mut Vec<u8>, entries: usize) {
    control(out, 11, entries);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Unsigned integers: type 5 (16-bit), 6 (32-bit) or 9 (64-bit), minimal bytes.
fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

/// The address a test client binds to for each country of the test data.
pub fn test_address(country: &str) -> Option<IpAddr> {
    match country {
        "GB" => "127.0.0.1".parse().ok(),
        "IN" => "127.0.0.2".parse().ok(),
        "US" => "127.0.0.3".parse().ok(),
        "NP" => "127.0.0.4".parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_refuses_bad_input() {
        assert_eq!(
            build_from_csv("10.0.0.0/8,IN\n10.1.0.0/16,US\n", 0),
            Err(WriteError::Overlap(2))
        );
        assert_eq!(build_from_csv("nonsense\n", 0), Err(WriteError::Line(1)));
        assert_eq!(
            build_from_csv("10.0.0.0/8,India\n", 0),
            Err(WriteError::Line(1))
        );
    }
}
