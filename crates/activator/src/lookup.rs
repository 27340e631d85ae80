//! Finding a program on the command's `PATH` the way `execvp` does, done here so a missing
//! command can be told apart from a program that exists but cannot start (e.g. its dynamic
//! loader is not in the image).
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::probe::{is_executable, is_file};

/// What glibc's `execvp` searches when `PATH` is unset (the hook may unset it).
const EXECVP_DEFAULT_PATH: &str = "/bin:/usr/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Run this path.
    Found(PathBuf),
    /// Only non-executable files of that name are on `PATH`.
    NotExecutable(PathBuf),
    NotFound,
}

/// Looks `program` up on `path_var`; a name with a `/` is used as given, like `execvp`.
/// Empty `PATH` entries mean the current directory.
pub fn find_program(program: &OsStr, path_var: Option<&OsStr>) -> Lookup {
    if program.is_empty() {
        return Lookup::NotFound;
    }
    if program.as_bytes().contains(&b'/') {
        return Lookup::Found(PathBuf::from(program));
    }
    let path_var = path_var.unwrap_or(OsStr::new(EXECVP_DEFAULT_PATH));
    let mut not_executable = None;
    for dir in path_var.as_bytes().split(|byte| *byte == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Lookup::Found(candidate);
        }
        if not_executable.is_none() && is_file(&candidate) {
            not_executable = Some(candidate);
        }
    }
    not_executable.map_or(Lookup::NotFound, Lookup::NotExecutable)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn first_executable_on_path_wins() {
        let dir = std::env::temp_dir().join(format!("flox-activate-lookup-{}", std::process::id()));
        let (first, second) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&first).unwrap();
        fs::create_dir_all(&second).unwrap();
        fs::write(first.join("tool"), "").unwrap(); // not executable: skipped
        fs::write(second.join("tool"), "").unwrap();
        fs::set_permissions(second.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", first.display(), second.display());

        assert_eq!(find_program(OsStr::new("tool"), Some(OsStr::new(&path))), Lookup::Found(second.join("tool")));
        fs::remove_file(second.join("tool")).unwrap();
        assert_eq!(
            find_program(OsStr::new("tool"), Some(OsStr::new(&path))),
            Lookup::NotExecutable(first.join("tool"))
        );
        assert_eq!(find_program(OsStr::new("missing"), Some(OsStr::new(&path))), Lookup::NotFound);
        assert_eq!(find_program(OsStr::new("./x"), None), Lookup::Found(PathBuf::from("./x")));
        assert_eq!(find_program(OsStr::new(""), None), Lookup::NotFound);
        fs::remove_dir_all(&dir).unwrap();
    }
}
