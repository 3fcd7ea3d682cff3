//! Reading markers out of a console log.
//!
//! A marker is a line such as `LAB:RESULT boot-cpus=1 rc=0` or `L2:INIT`. Console output of
//! several layers (L1 kernel, L1 scripts, L2 through the VMM) shares one serial line, so a
//! marker is found anywhere in a line, and the text before it is ignored.

use std::collections::BTreeMap;

/// Marker queries over a console text; implemented by [`super::LabRun`] and [`Section`].
pub trait Markers {
    /// The console text searched.
    fn text(&self) -> &str;

    /// Every line containing `prefix`, from `prefix` to the end of the line.
    fn markers(&self, prefix: &str) -> Vec<&str> {
        self.text()
            .lines()
            .filter_map(|line| {
                line.find(prefix)
                    .map(|at| line.get(at..).unwrap_or_default())
            })
            .map(str::trim_end)
            .collect()
    }

    /// Whether a line ends with exactly `marker` (marker found at its position, nothing after).
    fn has(&self, marker: &str) -> bool {
        self.markers(marker).contains(&marker)
    }

    /// The value of the first `key=VALUE` word in the text.
    fn value(&self, key: &str) -> Option<&str> {
        self.text()
            .lines()
            .find_map(|line| fields(line).get(key).copied())
    }

    /// The value of `key` in the first marker starting with `prefix`:
    /// `field("LAB:RESULT boot-cpus=1", "rc")` → `Some("0")`.
    fn field(&self, prefix: &str, key: &str) -> Option<&str> {
        self.markers(prefix)
            .into_iter()
            .find_map(|m| fields(m).get(key).copied())
    }

    /// The last `lines` lines, for failure messages.
    fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.text().lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }
}

/// The `key=VALUE` words of a line.
pub fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .collect()
}

/// The part of a console log from `LAB:BEGIN NAME` to `LAB:RESULT NAME ...` (inclusive),
/// or to the end of the log if the result line is missing.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    text: &'a str,
}

impl<'a> Section<'a> {
    pub fn find(log: &'a str, name: &str) -> Result<Section<'a>, String> {
        let begin = format!("LAB:BEGIN {name}");
        let start = log
            .find(&begin)
            .ok_or_else(|| format!("no `{begin}` in the log"))?;
        let rest = log.get(start..).unwrap_or_default();
        let result = format!("LAB:RESULT {name} ");
        let end = rest
            .find(&result)
            .map(|at| {
                rest.get(at..)
                    .and_then(|r| r.find('\n'))
                    .map_or(rest.len(), |nl| at + nl)
            })
            .unwrap_or(rest.len());
        Ok(Section {
            text: rest.get(..end).unwrap_or(rest),
        })
    }
}

impl Markers for Section<'_> {
    fn text(&self) -> &str {
        self.text
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    const LOG: &str = "[    1.0] kernel line\n\
        LAB:L1-UP uptime=9.81 cpus=2\n\
        LAB:BEGIN boot-cpus=1\n\
        noise L2:INIT\r\n\
        L2:NPROC=1\n\
        L2:PCI 0000:00:00.0 0x8086 0x29c0 0x060000\n\
        L2:POWEROFF\n\
        LAB:RESULT boot-cpus=1 rc=0\n\
        LAB:BEGIN boot-cpus=2\n\
        L2:INIT\n\
        LAB:RESULT boot-cpus=2 rc=3\n\
        LAB:DONE rc=1\n";

    struct Log(&'static str);
    impl Markers for Log {
        fn text(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn markers_are_found_after_noise() {
        let log = Log(LOG);
        assert!(log.has("L2:INIT"));
        assert!(!log.has("L2:IN"));
        assert_eq!(log.markers("L2:PCI 0000:00:00.0").len(), 1);
        assert_eq!(log.value("uptime"), Some("9.81"));
        assert_eq!(log.field("LAB:RESULT boot-cpus=2", "rc"), Some("3"));
        assert_eq!(log.field("LAB:DONE", "rc"), Some("1"));
        assert_eq!(log.tail(1), "LAB:DONE rc=1");
    }

    #[test]
    fn sections_end_at_their_result() {
        let one = Section::find(LOG, "boot-cpus=1").expect("section 1");
        assert!(one.has("L2:NPROC=1") && one.has("L2:POWEROFF"));
        assert_eq!(one.field("LAB:RESULT", "rc"), Some("0"));
        let two = Section::find(LOG, "boot-cpus=2").expect("section 2");
        assert!(!two.has("L2:POWEROFF"));
        assert!(Section::find(LOG, "boot-cpus=3").is_err());
    }
}
