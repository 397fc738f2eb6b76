pub mod cluster;
pub mod drops;
pub mod endpoints;
pub mod gc;
pub mod install;
pub mod load;
pub mod nat;
pub mod peers;
pub mod portmaps;
pub mod promote;
pub mod run;
pub mod stats;
pub mod status;
pub mod uninstall;

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
