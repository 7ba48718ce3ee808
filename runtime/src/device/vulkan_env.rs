//! Quiet Vulkan on a headless machine. Mesa installs an implicit Vulkan layer,
//! `VK_LAYER_MESA_device_select`, that puts the display's GPU first when an application lists
//! the GPUs. To learn which GPU that is, it connects to Wayland (wgpu enables the Wayland surface
//! extension wherever the driver has it), and without `XDG_RUNTIME_DIR` libwayland prints
//! `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on every listing: four
//! times for one `calm run`, from CubeCL's and calm's adapter requests, which are Vulkan only
//! already (no GL/EGL is probed). With no runtime directory there is no display to ask, so calm
//! turns the layer off there through the switch its manifest declares (`NODEVICE_SELECT=1`),
//! unless the user asked the layer for a device (`MESA_VK_DEVICE_SELECT`, `DRI_PRIME`) or set the
//! switch themselves.

use std::ffi::OsString;

/// The environment variable that turns the layer off (its manifest's `disable_environment`).
pub const DEVICE_SELECT_SWITCH: &str = "NODEVICE_SELECT";

/// Whether to turn the device-select layer off, given the environment (`var` reads one).
pub fn turn_off_device_select(var: impl Fn(&str) -> Option<OsString>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    !set("XDG_RUNTIME_DIR") && !set(DEVICE_SELECT_SWITCH) && !set("MESA_VK_DEVICE_SELECT") && !set("DRI_PRIME")
}

/// Sets `NODEVICE_SELECT=1` where [`turn_off_device_select`] says so. Call in `main` before any
/// thread starts (the Vulkan loader reads it when an instance is created).
pub fn prepare_process() {
    if turn_off_device_select(|name| std::env::var_os(name)) {
        std::env::set_var(DEVICE_SELECT_SWITCH, "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn the_layer_is_turned_off_only_without_a_runtime_directory_or_a_request() {
        assert!(turn_off_device_select(env(&[])));
        assert!(turn_off_device_select(env(&[("XDG_RUNTIME_DIR", "")])), "empty is unset, as libwayland reads it");
        assert!(!turn_off_device_select(env(&[("XDG_RUNTIME_DIR", "/run/user/1000")])), "a desktop keeps it");
        assert!(!turn_off_device_select(env(&[("MESA_VK_DEVICE_SELECT", "10de:2330")])), "a chosen device");
        assert!(!turn_off_device_select(env(&[("DRI_PRIME", "1")])));
        assert!(!turn_off_device_select(env(&[("NODEVICE_SELECT", "1")])), "already off");
    }
}
