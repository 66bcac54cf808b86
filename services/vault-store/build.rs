//! `sqlx::migrate!` embeds the migrations at compile time; rebuild when they change, or a
//! build would keep serving the schema it last saw.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
