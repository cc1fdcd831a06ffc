//! With the `dpdk` feature: compiles the DPDK shim (src/port/dpdk/shim.c) against the installed
//! DPDK, found with pkg-config, and links DPDK. Without it: nothing.
fn main() {
    println!("cargo:rerun-if-changed=src/port/dpdk/shim.c");
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    shim();
}

#[cfg(feature = "dpdk")]
fn shim() {
    let lib = match pkg_config::Config::new()
        .atleast_version("21.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "the dpdk feature needs DPDK 21.11 or newer with its pkg-config file: \
                 apt-get install libdpdk-dev pkg-config (or build without --features dpdk)\n{e}"
            );
            std::process::exit(1);
        }
    };
    // The compile flags as pkg-config gives them: DPDK's also force-include rte_config.h and
    // set the instruction set its inline functions were written for.
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut build = cc::Build::new();
    build.file("src/port/dpdk/shim.c").warnings(true);
    let mut words = cflags.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-include" {
            if let Some(f) = words.next() {
                build.flag("-include").flag(f);
            }
        } else {
            build.flag(w);
        }
    }
    for p in &lib.include_paths {
        build.include(p);
    }
    build.compile("meshd_dpdk_shim");
    // The shim is linked before DPDK's libraries, which pkg-config listed (with --as-needed).
    for l in &lib.libs {
        println!("cargo:rustc-link-lib={l}");
    }
}
