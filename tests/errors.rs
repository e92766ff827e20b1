//! The library's one error type: a caller can match on what went wrong (the model, its input contract, a
//! layer, a metric's prerequisite) and read the file or layer from the variant; exit codes follow it.

mod common;

use common::fixture;
use domsim::model::{OnnxModel, Selection};
use domsim::Error;

#[test]
fn errors_are_matchable_by_kind_with_their_subject() {
    let missing = std::path::Path::new("no/such/model.onnx");
    match OnnxModel::load(missing, 1, None, None, None) {
        Err(Error::Model { path, message }) => {
            assert_eq!(path, missing);
            assert!(message.contains("does not exist"), "{message}");
        }
        Err(other) => panic!("expected Error::Model, got {other:?}"),
        Ok(_) => panic!("a missing model must fail"),
    }
    let not_image = fixture("not_image/model.onnx");
    match OnnxModel::load(&not_image, 1, None, None, None) {
        Err(Error::InputContract { model, .. }) => assert_eq!(model, not_image),
        Err(other) => panic!("expected Error::InputContract, got {other:?}"),
        Ok(_) => panic!("a model without an image input must fail"),
    }
    let ambiguous = fixture("ambiguous/model.onnx");
    assert!(matches!(
        OnnxModel::load(&ambiguous, 1, None, None, None),
        Err(Error::InputContract { .. })
    ));
    let m = OnnxModel::load(&fixture("nchw_dyn/model.onnx"), 1, None, None, None).unwrap();
    match m.select(&Selection::Names(vec!["/no/such/layer".into()])) {
        Err(e @ Error::Layer { .. }) => {
            assert_eq!(e.exit_code(), 2);
            let Error::Layer { layer, message } = e else {
                unreachable!()
            };
            assert_eq!(layer, "/no/such/layer");
            assert!(message.contains("nearest layer names"), "{message}");
        }
        Err(other) => panic!("expected Error::Layer, got {other:?}"),
        Ok(_) => panic!("an unknown layer must fail"),
    }
    let x = ndarray::Array2::<f64>::zeros((4, 2));
    let set = domsim::metrics::SetData {
        x: &x,
        labels: None,
        classes: &[],
        groups: None,
    };
    match domsim::metrics::labelled(true, &set, &set) {
        Err(Error::Prerequisite { message, .. }) => {
            assert!(
                message.contains("the target set has no labels"),
                "{message}"
            )
        }
        Err(other) => panic!("expected Error::Prerequisite, got {other:?}"),
        Ok(_) => panic!("an unlabelled set must fail"),
    }
}
