//! Request paths and ACL patterns.

/// Decodes and checks a request path (without its query) so that what is
/// authorised is what is served. `None` (refuse) for a path that does not
/// start with `/`, an encoded `/`, `\` or NUL, a broken escape, an empty
/// segment (`//`), a `.` or `..` segment (also when encoded), a backslash or
/// control character, or bytes that are not UTF-8.
pub fn normalize_path(raw: &str) -> Option<String> {
    if !raw.starts_with('/') || raw.len() > 2048 {
        return None;
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = ((hex[0] as char).to_digit(16)? * 16 + (hex[1] as char).to_digit(16)?) as u8;
            if v == b'/' || v == b'\\' || v == 0 {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(out).ok()?;
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        // An empty last segment is a trailing slash, which is allowed.
        if (seg.is_empty() && i != last) || *seg == "." || *seg == ".." {
            return None;
        }
    }
    Some(path)
}

/// Whether `path` matches the ACL `pattern`, where `*` matches any run of
/// characters, `/` included, and everything else matches itself.
pub fn acl_matches(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether every path `acl` can match also lies in `scope`. Scopes are a
/// literal path, or a literal prefix ending in `*`.
pub fn scope_contains(scope: &str, acl: &str) -> bool {
    match scope.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => acl.starts_with(prefix),
        Some(_) => false,
        None => !scope.contains('*') && acl == scope,
    }
}
