//! Flox's `outdentText` (buildenvLib): hooks and profile scripts are written to the rendered
//! environment with their common indentation removed, because TOML multi-line strings are
//! usually indented along with the manifest.
//!
//! The rule, kept exactly: split on `\n`; the indentation of a non-empty line is its run of
//! leading spaces (tabs are ordinary characters); the smallest indentation over non-empty
//! lines is cut from the front of every line (shorter lines, i.e. empty ones, become empty);
//! the lines are joined with `\n` again, so a trailing newline survives.

/// Remove the indentation common to all non-empty lines of `text`.
pub fn outdent_text(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let common = lines
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| line.len() - line.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        // `common` counts ASCII spaces present at the start of every non-empty line, so the
        // cut is on a character boundary; empty lines have nothing to cut.
        .map(|line| line.get(common..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::outdent_text;

    #[test]
    fn removes_common_indent_and_keeps_relative_indent() {
        assert_eq!(outdent_text("    if true; then\n      echo hi\n    fi\n"), "if true; then\n  echo hi\nfi\n");
    }

    #[test]
    fn empty_lines_do_not_count_but_whitespace_lines_do() {
        assert_eq!(outdent_text("\n    a\n\n    b"), "\na\n\nb");
        assert_eq!(outdent_text("    a\n  \n    b"), "  a\n\n  b");
    }

    #[test]
    fn tabs_are_regular_characters() {
        assert_eq!(outdent_text("\ta\n\tb"), "\ta\n\tb");
        assert_eq!(outdent_text("  \ta\n  b"), "\ta\nb");
    }

    #[test]
    fn crlf_is_kept_and_cascading_indent_cut_to_the_smallest() {
        assert_eq!(outdent_text("  a\r\n  b\r\n"), "a\r\nb\r\n");
        assert_eq!(outdent_text("a\n  b\n    c"), "a\n  b\n    c");
        assert_eq!(outdent_text("    a\n  b\nc"), "    a\n  b\nc");
        assert_eq!(outdent_text(""), "");
    }
}
