using System.CommandLine;
using DistributedBackprop.Models;
using DistributedBackprop.Models.Onnx;

namespace DistributedBackprop.Cli.Commands;

/// <summary>`dbp export`: a model file as an ONNX graph that takes raw features (<see cref="OnnxExport"/>).</summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model file (safetensors) written by dbp train.", Required = true, HelpName = "FILE" };
        var onnx = new Option<string>("--onnx")
        {
            Description = "Write the model here as ONNX (opset 17): input 'features' float [n, features] (raw: the model's preprocessing is in the graph), outputs the last layer's activations [n, classes] ('probabilities' for softmax, else 'outputs') and 'predicted' (class index) [n]; class names in the metadata.",
            Required = true,
            HelpName = "FILE",
        };
        var command = new Command("export", "Export a model to another format: ONNX, for ONNX Runtime and every framework that reads it.") { model, onnx };
        command.SetAction(parse => CommandRunner.Run("export", () =>
        {
            string path = parse.GetValue(onnx)!;
            TrainCommand.CheckDistinct([("--onnx", path)], [("--model", parse.GetValue(model))]);
            TrainCommand.CheckWritable(path, "--onnx");
            ModelFile file = ModelFile.Load(parse.GetValue(model)!);
            OnnxExport.Write(file, path);
            Console.WriteLine($"wrote {path}: ONNX opset {OnnxExport.OpsetVersion}, input {OnnxExport.InputName} [n, {file.Architecture.Inputs}], outputs {OnnxExport.FirstOutputName(file.Architecture)} [n, {file.Architecture.Outputs}] and {OnnxExport.PredictedName} [n] over classes {string.Join(',', file.Classes)}");
            return ExitCodes.Success;
        }));
        return command;
    }
}
