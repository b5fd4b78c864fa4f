using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Models;
using DistributedBackprop.Models.Onnx;
using DistributedBackprop.Network;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace DistributedBackprop.Tests;

/// <summary>
/// <see cref="OnnxExport"/> against ONNX Runtime: for every hidden activation and every output activation,
/// the exported graph run by ONNX Runtime on raw features gives what `dbp predict` computes
/// (<see cref="Evaluator.Predict"/> after the model's preprocessing) to 1e-5, and its ArgMax is the
/// largest output. The graph carries the model's metadata.
/// </summary>
public class OnnxExportTests
{
    public static TheoryData<Activation, Activation> Activations()
    {
        var data = new TheoryData<Activation, Activation>();
        foreach (Activation hidden in new[] { Activation.Identity, Activation.Sigmoid, Activation.Tanh, Activation.Relu })
        {
            foreach (Activation output in Enum.GetValues<Activation>())
            {
                data.Add(hidden, output);
            }
        }
        return data;
    }

    private static (ModelFile Model, Dataset Raw) RandomModel(Activation hidden, Activation output, int features = 13, int classes = 5, int rows = 37)
    {
        Loss loss = output == Activation.Softmax ? Loss.CrossEntropy : Loss.MeanSquaredError;
        var architecture = Architecture.Create(features, [11, 7], classes, hidden, output, loss);
        float[] parameters = Initialisation.Create(architecture, 42);
        var random = new Randomness.Xoshiro256(9);
        // Non-trivial preprocessing, so a graph that forgot it would be caught.
        var shift = Enumerable.Range(0, features).Select(_ => random.NextSingle() * 4 - 2).ToArray();
        var scale = Enumerable.Range(0, features).Select(_ => 0.25f + random.NextSingle()).ToArray();
        var values = Enumerable.Range(0, rows * features).Select(_ => random.NextSingle() * 10 - 5).ToArray();
        var labels = Enumerable.Range(0, rows).Select(r => r % classes).ToArray();
        string[] names = Enumerable.Range(0, classes).Select(c => $"class {(char)('a' + c)}").ToArray();
        var raw = new Dataset("random", features, values, labels, names, DataKind.Table);
        return (new ModelFile(architecture, parameters, new Preprocessing(shift, scale), names), raw);
    }

    [Theory]
    [MemberData(nameof(Activations))]
    public void OnnxRuntime_computes_what_predict_computes(Activation hidden, Activation output)
    {
        var (model, raw) = RandomModel(hidden, output);
        byte[] onnx = OnnxExport.Build(model).ToByteArray();
        float[] expected = new Evaluator(model.Architecture).Predict(model.Parameters, model.Preprocessing.Apply(raw));

        using var session = new InferenceSession(onnx);
        var input = new DenseTensor<float>(raw.Values, [raw.Rows, raw.Features]);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor(OnnxExport.InputName, input)]);
        var byName = results.ToDictionary(r => r.Name);
        string first = OnnxExport.FirstOutputName(model.Architecture);
        Assert.Equal([first, OnnxExport.PredictedName], session.OutputMetadata.Keys);
        float[] actual = byName[first].AsTensor<float>().ToArray();
        long[] predicted = byName[OnnxExport.PredictedName].AsTensor<long>().ToArray();

        Assert.Equal(expected.Length, actual.Length);
        int classes = model.Classes.Count;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5 * Math.Max(1, Math.Abs(expected[i])),
                $"{hidden}/{output} row {i / classes} output {i % classes}: predict {expected[i]:R}, ONNX Runtime {actual[i]:R}");
        }
        for (int r = 0; r < raw.Rows; r++)
        {
            ReadOnlySpan<float> row = actual.AsSpan(r * classes, classes);
            Assert.Equal(row[(int)predicted[r]], System.Numerics.Tensors.TensorPrimitives.Max(row));
        }
    }

    [Fact]
    public void The_graph_has_a_dynamic_batch_axis_and_the_models_metadata()
    {
        var (model, raw) = RandomModel(Activation.Relu, Activation.Softmax);
        using var session = new InferenceSession(OnnxExport.Build(model).ToByteArray());
        Assert.Equal([-1, raw.Features], session.InputMetadata[OnnxExport.InputName].Dimensions);
        Assert.Equal("n", session.InputMetadata[OnnxExport.InputName].SymbolicDimensions[0]);
        Assert.Equal([-1, model.Classes.Count], session.OutputMetadata[OnnxExport.ProbabilitiesName].Dimensions);
        Dictionary<string, string> metadata = session.ModelMetadata.CustomMetadataMap;
        Assert.Equal("[\"class a\",\"class b\",\"class c\",\"class d\",\"class e\"]", metadata["classes_json"]);
        Assert.Equal("relu,relu,softmax", metadata["activations"]);
        Assert.Equal("DistributedBackprop", session.ModelMetadata.ProducerName);

        // One row and many rows through the same session.
        foreach (int rows in new[] { 1, raw.Rows })
        {
            var input = new DenseTensor<float>(raw.Values.AsMemory(0, rows * raw.Features), [rows, raw.Features]);
            using var results = session.Run([NamedOnnxValue.CreateFromTensor(OnnxExport.InputName, input)]);
            Assert.Equal(rows * model.Classes.Count, results[0].AsTensor<float>().Length);
        }
    }
}
