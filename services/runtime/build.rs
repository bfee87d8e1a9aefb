// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the directory at compile
// time, and cargo does not otherwise notice new files in it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
