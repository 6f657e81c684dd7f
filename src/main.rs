fn main() {
    for (name, crd) in serin::api::crds::all() {
        println!("# {name}\n{}", serin::api::crds::to_yaml(&crd).unwrap());
    }
}
