//! End-to-end tests of the `rill` binary with real node processes.
mod cgroup;
mod check;
mod cluster;
mod dataplane;
mod distribute;
mod faults;
mod leak;
mod lifecycle;
mod managed;
mod newcomer;
mod python;
mod relay;
mod run;
mod security;
mod support;
mod tooling;
mod traffic;
