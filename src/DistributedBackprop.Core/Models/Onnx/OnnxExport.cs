using MemoryMarshal = System.Runtime.InteropServices.MemoryMarshal;
using DistributedBackprop.Data;
using DistributedBackprop.Models.Onnx.Proto;
using DistributedBackprop.Network;
using Google.Protobuf;

namespace DistributedBackprop.Models.Onnx;

/// <summary>
/// A model as an ONNX graph that takes raw features: x' = (x − shift)·scale (Sub, Mul), then per layer
/// z_l = a_{l−1}·W_lᵀ + b_l (Gemm with transB, W in the model file's [out, in] layout) and a_l = σ(z_l)
/// (Sigmoid, Tanh, Relu, Softmax over the last axis; identity adds no node). Input <see cref="InputName"/>
/// float [n, features] with a dynamic batch axis; first output the last layer's activations [n, classes]
/// in the model's class order (<see cref="ProbabilitiesName"/> for softmax, <see cref="OutputsName"/>
/// otherwise: what `dbp predict` prints), second the predicted class index (ArgMax) [n]. The model file's
/// metadata (classes, activations, loss, any training configuration) goes into the model's metadata_props.
/// </summary>
public static class OnnxExport
{
    /// <summary>ONNX IR version 8 and the default-domain opset 17: read by every ONNX Runtime since 1.13.</summary>
    public const long IrVersion = 8;
    public const long OpsetVersion = 17;

    public const string InputName = "features";
    public const string ProbabilitiesName = "probabilities";
    public const string OutputsName = "outputs";
    public const string PredictedName = "predicted";

    /// <summary>The name of the first output for this model.</summary>
    public static string FirstOutputName(Architecture architecture) =>
        architecture.Layers[^1].Activation == Activation.Softmax ? ProbabilitiesName : OutputsName;

    /// <summary>Writes the model's ONNX form atomically (temporary file, then rename).</summary>
    public static void Write(ModelFile model, string path)
    {
        ModelProto onnx = Build(model);
        DataFiles.WriteAtomically(path, onnx.WriteTo);
    }

    public static ModelProto Build(ModelFile model)
    {
        Architecture architecture = model.Architecture;
        var graph = new GraphProto
        {
            Name = "dbp",
            DocString = $"{architecture.Describe()}: raw features → (x − input.shift)·input.scale → layers → {FirstOutputName(architecture)}, {PredictedName}",
        };
        graph.Input.Add(FloatTensorInfo(InputName, "n", architecture.Inputs));

        graph.Initializer.Add(FloatTensor("input.shift", [architecture.Inputs], model.Preprocessing.Shift));
        graph.Initializer.Add(FloatTensor("input.scale", [architecture.Inputs], model.Preprocessing.Scale));
        graph.Node.Add(Node("Sub", "preprocess.shift", [InputName, "input.shift"], "input.shifted"));
        graph.Node.Add(Node("Mul", "preprocess.scale", ["input.shifted", "input.scale"], "a0"));

        string a = "a0";
        string finalName = FirstOutputName(architecture);
        for (int l = 0; l < architecture.Layers.Count; l++)
        {
            LayerSpec layer = architecture.Layers[l];
            bool last = l == architecture.Layers.Count - 1;
            string weight = $"layers.{l}.weight", bias = $"layers.{l}.bias", z = $"z{l + 1}";
            graph.Initializer.Add(FloatTensor(weight, [layer.Outputs, layer.Inputs], architecture.Weight<float>(model.Parameters, l)));
            graph.Initializer.Add(FloatTensor(bias, [layer.Outputs], architecture.Bias<float>(model.Parameters, l)));
            graph.Node.Add(Node("Gemm", $"layers.{l}.linear", [a, weight, bias], z, IntAttribute("transB", 1)));
            string activated = last ? finalName : $"a{l + 1}";
            string? op = layer.Activation switch
            {
                Activation.Sigmoid => "Sigmoid",
                Activation.Tanh => "Tanh",
                Activation.Relu => "Relu",
                Activation.Softmax => "Softmax",
                Activation.Identity => last ? "Identity" : null,
                _ => throw new ArgumentOutOfRangeException(nameof(model), layer.Activation, "no ONNX operator for this activation"),
            };
            if (op is null)
            {
                activated = z;
            }
            else
            {
                NodeProto node = Node(op, $"layers.{l}.{layer.Activation.Name()}", [z], activated);
                if (layer.Activation == Activation.Softmax)
                {
                    node.Attribute.Add(IntAttribute("axis", -1));
                }
                graph.Node.Add(node);
            }
            a = activated;
        }
        graph.Node.Add(Node("ArgMax", "predict", [finalName], PredictedName, IntAttribute("axis", 1), IntAttribute("keepdims", 0)));
        graph.Output.Add(FloatTensorInfo(finalName, "n", architecture.Outputs));
        graph.Output.Add(new ValueInfoProto
        {
            Name = PredictedName,
            DocString = "index of the largest output, into metadata_props classes_json",
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int64, Shape = Shape(Dynamic("n")) } },
        });

        var onnx = new ModelProto
        {
            IrVersion = IrVersion,
            ProducerName = "DistributedBackprop",
            ProducerVersion = typeof(OnnxExport).Assembly.GetName().Version?.ToString() ?? "",
            Domain = "dbp",
            ModelVersion = 1,
            DocString = "Exported by `dbp export`; takes raw features (the model's preprocessing is part of the graph).",
            Graph = graph,
        };
        onnx.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = OpsetVersion });
        foreach (var (key, value) in model.Metadata().OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            onnx.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        }
        return onnx;
    }

    private static NodeProto Node(string op, string name, string[] inputs, string output, params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = name };
        node.Input.AddRange(inputs);
        node.Output.Add(output);
        node.Attribute.AddRange(attributes);
        return node;
    }

    private static AttributeProto IntAttribute(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    /// <summary>A float initializer; raw_data is little-endian IEEE 754 by the ONNX specification.</summary>
    private static TensorProto FloatTensor(string name, long[] dims, ReadOnlySpan<float> values)
    {
        var tensor = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
        tensor.Dims.AddRange(dims);
        if (BitConverter.IsLittleEndian)
        {
            tensor.RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values));
        }
        else
        {
            var bytes = new byte[values.Length * sizeof(float)];
            for (int i = 0; i < values.Length; i++)
            {
                System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * sizeof(float)), values[i]);
            }
            tensor.RawData = ByteString.CopyFrom(bytes);
        }
        return tensor;
    }

    private static ValueInfoProto FloatTensorInfo(string name, string batch, int width) => new()
    {
        Name = name,
        Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = Shape(Dynamic(batch), Fixed(width)) } },
    };

    private static TensorShapeProto Shape(params TensorShapeProto.Types.Dimension[] dims)
    {
        var shape = new TensorShapeProto();
        shape.Dim.AddRange(dims);
        return shape;
    }

    private static TensorShapeProto.Types.Dimension Dynamic(string name) => new() { DimParam = name };

    private static TensorShapeProto.Types.Dimension Fixed(long size) => new() { DimValue = size };
}
