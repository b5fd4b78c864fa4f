using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DistributedBackprop.Cli.Output;
using DistributedBackprop.Data;
using DistributedBackprop.Engine;
using DistributedBackprop.Models;
using DistributedBackprop.Network;
using Spectre.Console;

namespace DistributedBackprop.Cli.Commands;

/// <summary>`dbp evaluate`: loss, accuracy and confusion matrix of a model on labelled data.</summary>
internal static class EvaluateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model file (safetensors) written by dbp train.", Required = true, HelpName = "FILE" };
        var data = new Option<string>("--data") { Description = "Labelled data (CSV, IDX file or IDX directory).", Required = true, HelpName = "PATH" };
        var label = new Option<string?>("--label") { Description = "CSV label column (name or 0-based index). Default: the last column.", HelpName = "COLUMN" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object (loss, accuracy, n, classes, confusion) instead of tables." };
        var header = OptionParsing.HeaderOption();
        var plot = new Option<string?>("--plot") { Description = "Also draw the confusion matrix here (PNG).", HelpName = "FILE" };
        var (width, height) = PlotCommand.SizeOptions();
        var command = new Command("evaluate", "Evaluate a model: loss, accuracy and confusion matrix.") { model, data, label, header, json, plot, width, height };
        command.SetAction(parse => CommandRunner.Run("evaluate", () =>
        {
            string? plotPath = parse.GetValue(plot);
            int plotWidth = parse.GetValue(width), plotHeight = parse.GetValue(height) ?? Math.Min(10000, plotWidth * 7 / 8);
            if (plotPath is not null)
            {
                TrainingPlots.CheckSize(plotWidth, plotHeight);
                TrainCommand.CheckDistinct([("--plot", plotPath)], [("--model", parse.GetValue(model)), ("--data", parse.GetValue(data))]);
                TrainCommand.CheckWritable(plotPath, "--plot");
            }
            ModelFile file = ModelFile.Load(parse.GetValue(model)!);
            Dataset raw = DataSources.LoadWithClasses(parse.GetValue(data)!, parse.GetValue(label), file.Classes, file.Architecture.Inputs, header: parse.GetValue(header));
            EvaluationResult result = new Evaluator(file.Architecture).Evaluate(file.Parameters, file.Preprocessing.Apply(raw));
            if (plotPath is not null)
            {
                string title = string.Create(CultureInfo.InvariantCulture, $"{Path.GetFileName(parse.GetValue(model))} on {Path.GetFileName(parse.GetValue(data))}: accuracy {result.Accuracy:P2} (n {result.Rows})");
                TrainingPlots.SavePng(TrainingPlots.Confusion(result.Confusion, file.Classes, title), plotPath, plotWidth, plotHeight);
            }
            if (parse.GetValue(json))
            {
                Console.WriteLine(ToJson(result, file.Classes));
                return ExitCodes.Success;
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"n {result.Rows}  loss {result.Loss:F6}  accuracy {result.Accuracy:P2}"));
            if (file.Classes.Count > MaxClassesInMatrix)
            {
                Table mistaken = MostConfusedClasses(result, file.Classes, out int shown);
                Console.WriteLine($"{file.Classes.Count} classes: the confusion matrix is in --json and --plot; below, the {shown} classes with the most mistakes");
                AnsiConsole.Write(mistaken);
                return ExitCodes.Success;
            }
            var table = new Table().Border(TableBorder.Simple).Title("confusion matrix (rows: true class, columns: predicted)");
            table.AddColumn("");
            foreach (string name in file.Classes)
            {
                table.AddColumn(new TableColumn(Markup.Escape(name)).RightAligned());
            }
            for (int t = 0; t < file.Classes.Count; t++)
            {
                var cells = new List<string> { Markup.Escape(file.Classes[t]) };
                for (int p = 0; p < file.Classes.Count; p++)
                {
                    cells.Add(result.Confusion[t, p].ToString(CultureInfo.InvariantCulture));
                }
                table.AddRow(cells.ToArray());
            }
            AnsiConsole.Write(table);
            return ExitCodes.Success;
        }));
        return command;
    }

    /// <summary>
    /// Past this many classes the confusion matrix is not drawn as text: it would be wider than any terminal (and
    /// 5,000 classes took Spectre.Console minutes to lay out). --json and --plot still give all of it.
    /// </summary>
    private const int MaxClassesInMatrix = 30;

    /// <summary>The classes with the most misclassified rows: recall, and the class each is most often taken for.</summary>
    private static Table MostConfusedClasses(EvaluationResult result, IReadOnlyList<string> classes, out int shown)
    {
        var rows = Enumerable.Range(0, classes.Count).Select(t =>
        {
            long total = 0, mistakes = 0;
            int likeliest = -1;
            for (int p = 0; p < classes.Count; p++)
            {
                total += result.Confusion[t, p];
                if (p != t)
                {
                    mistakes += result.Confusion[t, p];
                    if (likeliest < 0 || result.Confusion[t, p] > result.Confusion[t, likeliest]) likeliest = p;
                }
            }
            return (Class: t, Total: total, Mistakes: mistakes, Likeliest: likeliest);
        }).Where(r => r.Mistakes > 0).OrderByDescending(r => r.Mistakes).ThenBy(r => r.Class).Take(20).ToList();
        shown = rows.Count;
        var table = new Table().Border(TableBorder.Simple);
        foreach (string heading in new[] { "true class", "rows", "wrong", "recall", "most often taken for" })
        {
            table.AddColumn(new TableColumn(heading));
        }
        foreach (var (t, total, mistakes, likeliest) in rows)
        {
            table.AddRow(Markup.Escape(classes[t]), total.ToString(CultureInfo.InvariantCulture), mistakes.ToString(CultureInfo.InvariantCulture),
                string.Create(CultureInfo.InvariantCulture, $"{(double)(total - mistakes) / total:P1}"),
                Markup.Escape(string.Create(CultureInfo.InvariantCulture, $"{classes[likeliest]} ({result.Confusion[t, likeliest]})")));
        }
        return table;
    }

    public static string ToJson(EvaluationResult result, IReadOnlyList<string> classes)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteNumber("loss", result.Loss);
            json.WriteNumber("accuracy", result.Accuracy);
            json.WriteNumber("n", result.Rows);
            json.WriteStartArray("classes");
            foreach (string name in classes) json.WriteStringValue(name);
            json.WriteEndArray();
            json.WriteStartArray("confusion");
            for (int t = 0; t < classes.Count; t++)
            {
                json.WriteStartArray();
                for (int p = 0; p < classes.Count; p++) json.WriteNumberValue(result.Confusion[t, p]);
                json.WriteEndArray();
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }
}

/// <summary>`dbp predict`: predicted class and class probabilities for every row, as CSV.</summary>
internal static class PredictCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model file (safetensors).", Required = true, HelpName = "FILE" };
        var data = new Option<string>("--data") { Description = "Rows to predict: CSV with the model's feature columns (a label column, if present, is ignored), or IDX.", Required = true, HelpName = "PATH" };
        var label = new Option<string?>("--label") { Description = "CSV label column to ignore, if the file has one (name or index). Default: the last column.", HelpName = "COLUMN" };
        var output = new Option<string?>("--out") { Description = "Write the CSV here (default: standard output).", HelpName = "FILE" };
        var header = OptionParsing.HeaderOption();
        var command = new Command("predict", "Predict classes: CSV with row, predicted class, and one probability column per class.") { model, data, label, header, output };
        command.SetAction(parse => CommandRunner.Run("predict", () =>
        {
            ModelFile file = ModelFile.Load(parse.GetValue(model)!);
            string dataPath = parse.GetValue(data)!;
            string? outPath = parse.GetValue(output);
            TrainCommand.CheckDistinct([("--out", outPath)], [("--model", parse.GetValue(model)), ("--data", dataPath)]);
            TrainCommand.CheckWritable(outPath, "--out");
            Dataset raw = Directory.Exists(dataPath) || !LooksLikeCsv(dataPath)
                ? DataSources.LoadWithClasses(dataPath, null, file.Classes, file.Architecture.Inputs)
                : CsvReader.Read(dataPath, new CsvOptions { LabelColumn = parse.GetValue(label), LabelOptional = true, ExpectedFeatures = file.Architecture.Inputs, Header = parse.GetValue(header) });
            float[] outputs = new Evaluator(file.Architecture).Predict(file.Parameters, file.Preprocessing.Apply(raw));
            string csv = ToCsv(outputs, file);
            if (outPath is null)
            {
                Console.Out.Write(csv);
            }
            else
            {
                DataFiles.WriteAtomically(outPath, stream => stream.Write(Encoding.UTF8.GetBytes(csv)));
            }
            return ExitCodes.Success;
        }));
        return command;
    }

    private static bool LooksLikeCsv(string path)
    {
        string name = Path.GetFileName(path);
        return !name.Contains("-idx", StringComparison.Ordinal) && !name.EndsWith(".idx", StringComparison.OrdinalIgnoreCase);
    }

    private static string ToCsv(float[] outputs, ModelFile file)
    {
        int classes = file.Classes.Count;
        string prefix = file.Architecture.Layers[^1].Activation == Activation.Softmax ? "prob_" : "output_";
        var csv = new StringBuilder();
        csv.Append("row,predicted");
        foreach (string name in file.Classes)
        {
            csv.Append(',').Append(Quote(prefix + name));
        }
        csv.Append('\n');
        for (int r = 0; r < outputs.Length / classes; r++)
        {
            ReadOnlySpan<float> row = outputs.AsSpan(r * classes, classes);
            csv.Append(r.ToString(CultureInfo.InvariantCulture)).Append(',').Append(Quote(file.Classes[System.Numerics.Tensors.TensorPrimitives.IndexOfMax(row)]));
            foreach (float p in row)
            {
                csv.Append(',').Append(p.ToString("R", CultureInfo.InvariantCulture));
            }
            csv.Append('\n');
        }
        return csv.ToString();
    }

    private static string Quote(string field) =>
        field.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + field.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"" : field;
}

/// <summary>
/// `dbp gradients`: ∂J/∂θ of the model's mean loss over all rows of the data as one batch, computed in
/// double precision by the same backward sweep the trainer uses, written as safetensors.
/// </summary>
internal static class GradientsCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model file (safetensors).", Required = true, HelpName = "FILE" };
        var data = new Option<string>("--data") { Description = "Labelled data; all rows form one batch.", Required = true, HelpName = "PATH" };
        var label = new Option<string?>("--label") { Description = "CSV label column (name or 0-based index). Default: the last column.", HelpName = "COLUMN" };
        var output = new Option<string>("--out") { Description = "Write the gradients here (safetensors, tensor names as in the model).", Required = true, HelpName = "FILE" };
        var header = OptionParsing.HeaderOption();
        var command = new Command("gradients", "Write ∂J/∂θ of the mean loss over all rows (after the model's preprocessing) as safetensors.") { model, data, label, header, output };
        command.SetAction(parse => CommandRunner.Run("gradients", () =>
        {
            ModelFile file = ModelFile.Load(parse.GetValue(model)!);
            string outPath = parse.GetValue(output)!;
            TrainCommand.CheckDistinct([("--out", outPath)], [("--model", parse.GetValue(model)), ("--data", parse.GetValue(data))]);
            TrainCommand.CheckWritable(outPath, "--out");
            Dataset raw = DataSources.LoadWithClasses(parse.GetValue(data)!, parse.GetValue(label), file.Classes, file.Architecture.Inputs, header: parse.GetValue(header));
            Dataset rows = file.Preprocessing.Apply(raw);
            Architecture arch = file.Architecture;

            var network = new Network<double>(arch);
            Span<double> input = network.Input(rows.Rows);
            for (int i = 0; i < rows.Values.Length; i++)
            {
                input[i] = rows.Values[i];
            }
            double[] parameters = file.Parameters.Select(p => (double)p).ToArray();
            network.Forward(parameters, rows.Rows);
            var gradient = new double[arch.ParameterCount];
            BatchResult result = network.Backward(parameters, rows.Labels, [0, rows.Rows], rows.Rows, gradient);

            var tensors = new List<Tensor>();
            for (int l = 0; l < arch.Layers.Count; l++)
            {
                LayerSpec layer = arch.Layers[l];
                tensors.Add(new Tensor($"layers.{l}.weight", [layer.Outputs, layer.Inputs], arch.Weight<double>(gradient, l).ToArray().Select(g => (float)g).ToArray()));
                tensors.Add(new Tensor($"layers.{l}.bias", [layer.Outputs], arch.Bias<double>(gradient, l).ToArray().Select(g => (float)g).ToArray()));
            }
            var metadata = new Dictionary<string, string>
            {
                ["format_version"] = ModelFile.FormatVersion,
                ["content"] = "gradients of the mean loss",
                ["loss"] = arch.Loss.Name(),
                ["loss_value"] = (result.LossSum / rows.Rows).ToString("R", CultureInfo.InvariantCulture),
                ["n"] = rows.Rows.ToString(CultureInfo.InvariantCulture),
                ["precision"] = "computed in float64, stored as float32",
            };
            DataFiles.WriteAtomically(outPath, stream => SafeTensors.Write(stream, tensors, metadata));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"J = {result.LossSum / rows.Rows:R} over {rows.Rows} rows; gradients of {arch.ParameterCount} parameters written to {outPath}"));
            return ExitCodes.Success;
        }));
        return command;
    }
}
