//! Flox/Nix system names (`x86_64-linux`, …) and how a node's architecture maps onto them.
//!
//! Lock entries are filtered by system, so the node must know its own: from the compiled
//! target ([`System::host`]) or from what Kubernetes reports (`kubernetes.io/arch`, Go names).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The systems Flox locks environments for (`options.systems` accepts exactly these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    X86_64Linux,
    Aarch64Linux,
    X86_64Darwin,
    Aarch64Darwin,
}

/// A system name or node architecture this project does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemError {
    #[error("system '{0}' is not supported; accepted: x86_64-linux, aarch64-linux, x86_64-darwin, aarch64-darwin")]
    Unknown(String),
    #[error("node architecture '{arch}' on '{os}' is not supported; accepted: amd64 or arm64 on linux")]
    UnsupportedNode { arch: String, os: String },
}

impl System {
    /// Every known system, in Flox's usual listing order.
    pub const ALL: [System; 4] =
        [System::Aarch64Darwin, System::Aarch64Linux, System::X86_64Darwin, System::X86_64Linux];

    /// The Nix spelling, e.g. `x86_64-linux`.
    pub fn as_str(self) -> &'static str {
        match self {
            System::X86_64Linux => "x86_64-linux",
            System::Aarch64Linux => "aarch64-linux",
            System::X86_64Darwin => "x86_64-darwin",
            System::Aarch64Darwin => "aarch64-darwin",
        }
    }

    /// The system of a Linux Kubernetes node from its Go architecture name
    /// (`node.status.nodeInfo.architecture` / label `kubernetes.io/arch`).
    pub fn from_k8s_arch(arch: &str) -> Result<System, SystemError> {
        System::from_k8s_node(arch, "linux")
    }

    /// The system of a Kubernetes node from its Go architecture and OS names.
    /// Only Linux nodes run containers here, so anything else is refused.
    pub fn from_k8s_node(arch: &str, os: &str) -> Result<System, SystemError> {
        match (arch, os) {
            ("amd64", "linux") => Ok(System::X86_64Linux),
            ("arm64", "linux") => Ok(System::Aarch64Linux),
            _ => Err(SystemError::UnsupportedNode { arch: arch.to_string(), os: os.to_string() }),
        }
    }

    /// The Go architecture name Kubernetes uses for this system (`amd64` / `arm64`).
    pub fn k8s_arch(self) -> &'static str {
        match self {
            System::X86_64Linux | System::X86_64Darwin => "amd64",
            System::Aarch64Linux | System::Aarch64Darwin => "arm64",
        }
    }

    /// The system this binary was compiled for; Flox's CLI likewise uses its compile-time
    /// target to filter lock entries. Rust's `ARCH-OS` spelling equals Nix's on these targets.
    pub fn host() -> Result<System, SystemError> {
        System::from_arch_os(std::env::consts::ARCH, std::env::consts::OS)
    }

    /// Compose a system from Rust/Nix CPU and OS names (`x86_64`, `linux`), as [`System::host`] does.
    pub fn from_arch_os(arch: &str, os: &str) -> Result<System, SystemError> {
        let os = if os == "macos" { "darwin" } else { os };
        format!("{arch}-{os}").parse()
    }

    /// Whether this is a Linux system (one a node can run containers for).
    pub fn is_linux(self) -> bool {
        matches!(self, System::X86_64Linux | System::Aarch64Linux)
    }
}

impl FromStr for System {
    type Err = SystemError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        System::ALL.into_iter().find(|system| system.as_str() == s).ok_or_else(|| SystemError::Unknown(s.to_string()))
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for System {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for System {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for system in System::ALL {
            assert_eq!(system.as_str().parse::<System>().unwrap(), system);
            assert_eq!(system.to_string(), system.as_str());
        }
        assert_eq!("aarch64-darwin".parse::<System>().unwrap(), System::Aarch64Darwin);
    }

    #[test]
    fn unknown_names_are_refused_with_the_accepted_list() {
        let err = "riscv64-linux".parse::<System>().unwrap_err().to_string();
        assert!(err.contains("'riscv64-linux'") && err.contains("x86_64-linux"), "{err}");
        assert!("X86_64-linux".parse::<System>().is_err());
        assert!("".parse::<System>().is_err());
    }

    #[test]
    fn kubernetes_arch_mapping() {
        assert_eq!(System::from_k8s_arch("amd64").unwrap(), System::X86_64Linux);
        assert_eq!(System::from_k8s_arch("arm64").unwrap(), System::Aarch64Linux);
        let err = System::from_k8s_arch("s390x").unwrap_err().to_string();
        assert!(err.contains("'s390x'") && err.contains("amd64"), "{err}");
        assert!(System::from_k8s_node("amd64", "windows").is_err());
        assert_eq!(System::X86_64Linux.k8s_arch(), "amd64");
        assert_eq!(System::Aarch64Linux.k8s_arch(), "arm64");
    }

    #[test]
    fn host_matches_the_compiled_target() {
        let expected = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        assert_eq!(System::host().unwrap().as_str(), expected);
        assert_eq!(System::from_arch_os("aarch64", "macos").unwrap(), System::Aarch64Darwin);
    }

    #[test]
    fn serde_as_string() {
        let system: System = serde_json::from_str("\"aarch64-linux\"").unwrap();
        assert_eq!(system, System::Aarch64Linux);
        assert_eq!(serde_json::to_string(&system).unwrap(), "\"aarch64-linux\"");
        assert!(serde_json::from_str::<System>("\"x86_64-windows\"").is_err());
    }
}
