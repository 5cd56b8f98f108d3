"""Imports a Keras HDF5 model (MobileNet.h5 and the like) into the directory layout
`classifier-api serve --model-dir` reads, the layout of the shipped model:

    OUT_DIR/frozen_graph.pb            GraphDef, variables folded in: input_1:0 -> Identity:0
    OUT_DIR/saved_model/               tag serve, signature serving_default:
                                       serving_default_input_1:0 -> StatefulPartitionedCall:0
    OUT_DIR/imagenet_class_index.json  the labels, in the same order as the outputs
    OUT_DIR/import.json                where it came from and how it was loaded (not read by the service)

Run through scripts/import-keras-model.sh, which provides the venv (scripts/install-keras-venv.sh).
Modules: hdf5 (what the file holds, h5py only), load (Keras 3 deserialisation with Keras 2
compatibility, or a MobileNet rebuild), interface (what the service needs), export (the two
forms, checked against Keras), labels.
"""
