fn main() { println!("gateway"); }
