//! Output: tables (each column as wide as its widest cell), a rate limit
//! as a table shows it, and writing to stdout.

use cstor_mgmt::size::format_size;

/// A rate limit as shown in a table.
pub(super) fn throttle_text(bytes_per_second: u64) -> String {
    if bytes_per_second == 0 {
        "unlimited".to_string()
    } else {
        format!("{}/s", format_size(bytes_per_second))
    }
}

/// How a daemon's or target's links are secured, as status shows it.
pub(super) fn links_text(insecure_plaintext: bool) -> &'static str {
    if insecure_plaintext {
        "PLAINTEXT (insecure)"
    } else {
        "mutual TLS"
    }
}

/// Writes a command's output to stdout. A closed pipe (`| head`) is not
/// an error worth a panic: the reader has what it wanted.
pub(super) fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush());
}

/// Rows under headers, each column as wide as its widest cell.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        format!("{}\n", text.trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
