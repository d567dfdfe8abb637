"""The wire schema: the committed generated files match inference.proto, and the messages and
service are wire-compatible with Triton's (protos/)."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_service
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    ServiceDescriptor,
)

from turnout.protos import inference_pb2
from turnout.protos.generate import PROTO_DIR, PROTOS, generate, generated_files

OURS = inference_pb2.DESCRIPTOR
GENERATED = [name for proto in PROTOS for name in generated_files(proto)]
SERVICE = "GRPCInferenceService"


# -- drift ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    generate(out)
    return out


@pytest.mark.parametrize("name", GENERATED)
def test_committed_file_matches_the_proto(regenerated: Path, name: str) -> None:
    fresh = (regenerated / name).read_bytes()
    committed = (PROTO_DIR / name).read_bytes()

    assert fresh == committed, (
        f"protos/{name} differs from what its .proto gives; run python -m turnout.protos.generate"
    )


def test_generate_writes_only_the_generated_files(regenerated: Path) -> None:
    assert sorted(path.name for path in regenerated.iterdir()) == sorted(GENERATED)


# -- wire compatibility with Triton --------------------------------------------------------------


def triton_pool() -> Any:
    pool = triton_service.DESCRIPTOR.pool
    assert triton_config.DESCRIPTOR.pool is pool
    return pool


def triton_message(full_name: str) -> Descriptor:
    try:
        found: Descriptor = triton_pool().FindMessageTypeByName(full_name)
    except KeyError:
        pytest.fail(f"Triton has no message {full_name}")
    return found


def triton_enum(full_name: str) -> EnumDescriptor:
    try:
        found: EnumDescriptor = triton_pool().FindEnumTypeByName(full_name)
    except KeyError:
        pytest.fail(f"Triton has no enum {full_name}")
    return found


def field_wire(field: FieldDescriptor) -> dict[str, object]:
    """What a field looks like on the wire, and to code generated from the schema."""
    return {
        "number": field.number,
        "type": field.type,
        "repeated": field.is_repeated,
        "packed": field.is_packed,
        "message": field.message_type.full_name if field.message_type else None,
        "enum": field.enum_type.full_name if field.enum_type else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
    }


def compare_messages(ours: Descriptor, theirs: Descriptor, problems: list[str]) -> None:
    """Walk ``ours`` and its nested messages and enums, noting every difference from Triton's."""
    where = ours.full_name
    if ours.GetOptions().map_entry != theirs.GetOptions().map_entry:
        problems.append(f"{where}: map entry {ours.GetOptions().map_entry}")
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        if other is None:
            problems.append(f"{where}.{field.name}: not in Triton's message")
            continue
        mine, triton = field_wire(field), field_wire(other)
        for key, value in mine.items():
            if value != triton[key]:
                problems.append(f"{where}.{field.name}: {key} {value!r}, Triton {triton[key]!r}")
    for nested in ours.nested_types:
        other_nested = theirs.nested_types_by_name.get(nested.name)
        if other_nested is None:
            problems.append(f"{nested.full_name}: not in Triton's message")
            continue
        compare_messages(nested, other_nested, problems)
    for enum in ours.enum_types:
        other_enum = theirs.enum_types_by_name.get(enum.name)
        if other_enum is None:
            problems.append(f"{enum.full_name}: not in Triton's message")
            continue
        compare_enums(enum, other_enum, problems)


def enum_values(enum: EnumDescriptor) -> dict[str, int]:
    return {value.name: value.number for value in enum.values}


def compare_enums(ours: EnumDescriptor, theirs: EnumDescriptor, problems: list[str]) -> None:
    if enum_values(ours) != enum_values(theirs):
        problems.append(f"{ours.full_name}: {enum_values(ours)}, Triton {enum_values(theirs)}")


def all_enums() -> list[EnumDescriptor]:
    found = list(OURS.enum_types_by_name.values())

    def walk(message: Descriptor) -> None:
        found.extend(message.enum_types)
        for nested in message.nested_types:
            walk(nested)

    for message in OURS.message_types_by_name.values():
        walk(message)
    return found


def our_service() -> ServiceDescriptor:
    return OURS.services_by_name[SERVICE]


def test_same_package() -> None:
    assert OURS.package == "inference"
    assert triton_service.DESCRIPTOR.package == OURS.package
    assert triton_config.DESCRIPTOR.package == OURS.package


def test_same_service_name() -> None:
    theirs = triton_service.DESCRIPTOR.services_by_name[SERVICE]

    assert list(OURS.services_by_name) == [SERVICE]
    assert our_service().full_name == theirs.full_name == "inference.GRPCInferenceService"


@pytest.mark.parametrize("method", [m.name for m in our_service().methods])
def test_rpc_matches_triton(method: str) -> None:
    ours = our_service().methods_by_name[method]
    theirs = triton_service.DESCRIPTOR.services_by_name[SERVICE].methods_by_name.get(method)

    assert theirs is not None, f"Triton's service has no {method}"
    assert ours.input_type.full_name == theirs.input_type.full_name
    assert ours.output_type.full_name == theirs.output_type.full_name
    assert ours.client_streaming == theirs.client_streaming
    assert ours.server_streaming == theirs.server_streaming


def test_streaming_rpc_is_streaming() -> None:
    stream = our_service().methods_by_name["ModelStreamInfer"]

    assert (stream.client_streaming, stream.server_streaming) == (True, True)


@pytest.mark.parametrize("message", list(OURS.message_types_by_name))
def test_message_matches_triton(message: str) -> None:
    ours = OURS.message_types_by_name[message]
    problems: list[str] = []

    compare_messages(ours, triton_message(ours.full_name), problems)

    assert problems == []


@pytest.mark.parametrize("enum", [e.full_name for e in all_enums()])
def test_enum_matches_triton(enum: str) -> None:
    ours = next(e for e in all_enums() if e.full_name == enum)
    problems: list[str] = []

    compare_enums(ours, triton_enum(enum), problems)

    assert problems == []


def test_walk_reaches_nested_messages_and_enums() -> None:
    """The comparison covers nested messages (map entries included) and nested enums."""
    nested: list[str] = []

    def walk(message: Descriptor) -> None:
        for child in message.nested_types:
            nested.append(child.full_name)
            walk(child)

    for message in OURS.message_types_by_name.values():
        walk(message)

    assert "inference.ModelInferRequest.InferInputTensor" in nested
    assert "inference.ModelInferRequest.InferInputTensor.ParametersEntry" in nested
    assert "inference.ModelMetadataResponse.TensorMetadata" in nested
    assert {e.full_name for e in all_enums()} == {
        "inference.DataType",
        "inference.ModelInstanceGroup.Kind",
        "inference.ModelInput.Format",
    }


def test_comparison_notices_a_difference() -> None:
    """The walk is not vacuous: a message compared with a different one reports problems."""
    problems: list[str] = []

    compare_messages(
        OURS.message_types_by_name["ModelInferResponse"],
        triton_message("inference.ModelInferRequest"),
        problems,
    )

    assert "inference.ModelInferResponse.outputs: number 5, Triton 6" in problems
    assert "inference.ModelInferResponse.raw_output_contents: not in Triton's message" in problems
    assert "inference.ModelInferResponse.InferOutputTensor: not in Triton's message" in problems


# -- one process, two definitions of the same names ----------------------------------------------


def test_ours_live_in_a_private_pool() -> None:
    assert OURS.pool is not descriptor_pool.Default()
    assert triton_service.DESCRIPTOR.pool is descriptor_pool.Default()
    assert inference_pb2.ModelInferRequest is not triton_service.ModelInferRequest
    assert (
        inference_pb2.ModelInferRequest.DESCRIPTOR.full_name
        == triton_service.ModelInferRequest.DESCRIPTOR.full_name
    )


def test_request_bytes_cross_between_the_two() -> None:
    ours = inference_pb2.ModelInferRequest(model_name="mlp", model_version="2", id="42")
    tensor = ours.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([0.5, -1.5])
    tensor.parameters["binary_data_size"].int64_param = 8
    ours.parameters["timeout"].int64_param = 50_000
    ours.outputs.add(name="OUTPUT0").parameters["binary_data"].bool_param = True
    ours.raw_input_contents.append(b"\x00\x01")

    theirs = triton_service.ModelInferRequest.FromString(ours.SerializeToString())

    assert theirs.model_name == "mlp"
    assert theirs.model_version == "2"
    assert theirs.id == "42"
    assert list(theirs.inputs[0].shape) == [1, 2]
    assert list(theirs.inputs[0].contents.fp32_contents) == [0.5, -1.5]
    assert theirs.inputs[0].parameters["binary_data_size"].int64_param == 8
    assert theirs.parameters["timeout"].int64_param == 50_000
    assert theirs.outputs[0].parameters["binary_data"].bool_param is True
    assert list(theirs.raw_input_contents) == [b"\x00\x01"]
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(
        deterministic=True
    )


def test_config_bytes_cross_between_the_two() -> None:
    theirs = triton_service.ModelConfigResponse()
    config = theirs.config
    config.name = "mlp"
    config.platform = "onnxruntime_onnx"
    config.max_batch_size = 64
    config.input.add(name="INPUT0", data_type=triton_config.TYPE_FP32, dims=[64])
    config.output.add(name="LABEL", data_type=triton_config.TYPE_INT64, dims=[1])
    config.instance_group.add(kind=triton_config.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0])
    config.dynamic_batching.preferred_batch_size.extend([4, 8])

    ours = inference_pb2.ModelConfigResponse.FromString(theirs.SerializeToString())

    assert ours.config.name == "mlp"
    assert ours.config.max_batch_size == 64
    assert ours.config.input[0].data_type == inference_pb2.TYPE_FP32
    assert ours.config.output[0].data_type == inference_pb2.TYPE_INT64
    assert ours.config.instance_group[0].kind == inference_pb2.ModelInstanceGroup.KIND_GPU
    assert list(ours.config.instance_group[0].gpus) == [0]
    assert ours.config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(ours.config.dynamic_batching.preferred_batch_size) == [4, 8]


@pytest.mark.parametrize(
    "imports",
    [
        pytest.param(
            "import tritonclient.grpc.service_pb2, tritonclient.grpc.model_config_pb2; "
            "import turnout.protos.inference_pb2, turnout.protos.inference_pb2_grpc",
            id="triton-first",
        ),
        pytest.param(
            "import turnout.protos.inference_pb2, turnout.protos.inference_pb2_grpc; "
            "import tritonclient.grpc.service_pb2, tritonclient.grpc.model_config_pb2",
            id="turnout-first",
        ),
    ],
)
def test_both_import_into_a_fresh_process(imports: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"{imports}; print('ok')"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
